//! Partition replication across real `sluice-broker` processes: followers fetch from their
//! leader, join the in-sync set once caught up, `acks=all` answers only what every in-sync
//! replica has made durable, and the replicas' logs end up byte for byte the same.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{serial, wait_until, Cluster};
use sluice_client::{
    Acks, ClientConfig, Consumer, ConsumerConfig, ErrorCode, OffsetReset, Producer, ProducerConfig,
    ProducerRecord, TopicPartition,
};

/// The `.log` files of every partition directory of `topic` in a broker's data directory, by
/// (partition directory name, segment file name).
fn segment_files(data_dir: &Path, topic: &str) -> BTreeMap<(String, String), PathBuf> {
    let mut out = BTreeMap::new();
    let Ok(dirs) = std::fs::read_dir(data_dir.join("topics")) else {
        return out;
    };
    for dir in dirs.flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{topic}-")) {
            continue;
        }
        for file in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let file_name = file.file_name().to_string_lossy().into_owned();
            if file_name.ends_with(".log") {
                out.insert((name.clone(), file_name), file.path());
            }
        }
    }
    out
}

fn client_config(cluster: &Cluster) -> ClientConfig {
    ClientConfig::new(cluster.brokers.iter().map(|b| b.process.listen.clone()))
        .request_timeout(Duration::from_secs(10))
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

/// Three brokers, replication factor 3: the followers catch up and join the in-sync sets,
/// every `acks=all` record is acknowledged, and after a clean stop the three copies of every
/// partition are the same bytes.
#[test]
fn followers_join_the_in_sync_set_and_hold_the_same_bytes() {
    let _serial = serial();
    let mut cluster = Cluster::new(3, 10_000);
    let controller = cluster.wait_for_controller(&[1, 2, 3]);
    wait_until("all brokers registered", Duration::from_secs(20), || {
        cluster
            .describe(controller)
            .is_some_and(|v| v.state.brokers.len() == 3)
    });
    cluster.create_topic("replicated", 2, 3).expect("create");
    wait_until("every replica in sync", Duration::from_secs(20), || {
        cluster.describe(controller).is_some_and(|v| {
            v.state.topics["replicated"]
                .partitions
                .iter()
                .all(|p| p.in_sync.len() == 3)
        })
    });

    let records = 3_000u32;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config = client_config(&cluster);
    runtime.block_on(async move {
        let producer = Producer::new(ProducerConfig::new(config).acks(Acks::All))
            .await
            .expect("producer");
        let mut deliveries = Vec::new();
        for i in 0..records {
            let record = ProducerRecord::new("replicated")
                .key(format!("key-{}", i % 17))
                .value(format!("value-{i}"));
            deliveries.push(producer.send(record).await.expect("send"));
        }
        producer.close().await.expect("close");
        for delivery in deliveries {
            let delivered = delivery.await.expect("acks=all delivery");
            assert!(delivered.offset.is_some());
        }
    });

    // Stop every broker cleanly (logs flushed and cut to their size), then compare.
    for broker in &mut cluster.brokers {
        assert!(broker.terminate().success(), "broker {} stopped", broker.id);
    }
    let copies: Vec<BTreeMap<(String, String), PathBuf>> = cluster
        .brokers
        .iter()
        .map(|b| segment_files(b.dir(), "replicated"))
        .collect();
    assert!(!copies[0].is_empty(), "the topic has segments");
    let mut total = 0usize;
    for (key, path) in &copies[0] {
        let bytes = std::fs::read(path).expect("segment");
        total += bytes.len();
        for (i, other) in copies.iter().enumerate().skip(1) {
            let theirs = other
                .get(key)
                .unwrap_or_else(|| panic!("broker {} lacks {key:?}", i + 1));
            assert!(
                std::fs::read(theirs).expect("segment") == bytes,
                "{key:?} differs between broker 1 and broker {}",
                i + 1
            );
        }
    }
    assert_eq!(
        copies.iter().map(BTreeMap::len).collect::<Vec<_>>(),
        vec![copies[0].len(); 3]
    );
    eprintln!(
        "{} segment files, {total} bytes, the same on three brokers",
        copies[0].len()
    );
    assert!(
        total > records as usize * 10,
        "{total} bytes hold the records"
    );
}

/// Waits until every partition of `topic` has `size` in-sync replicas on the controller's view.
fn wait_in_sync(cluster: &Cluster, among: &[u64], topic: &str, size: usize) -> u64 {
    let controller = cluster.wait_for_controller(among);
    wait_until(
        &format!("{topic}: {size} in-sync replicas everywhere"),
        Duration::from_secs(30),
        || {
            cluster.describe(controller).is_some_and(|v| {
                v.state.topics.get(topic).is_some_and(|t| {
                    t.partitions
                        .iter()
                        .all(|p| p.in_sync.len() == size && p.leader.is_some())
                })
            })
        },
    );
    controller
}

/// Sends `records` records to partition 0 of `topic` with `acks=all`, a bounded window in
/// flight; reports each acknowledged record's number on the channel as it comes, and returns
/// (record, offset) for all of them. Any failed delivery fails the test.
fn spawn_producer(
    runtime: &tokio::runtime::Runtime,
    config: ClientConfig,
    topic: &'static str,
    records: u32,
) -> (
    tokio::task::JoinHandle<Vec<(u32, u64)>>,
    std::sync::mpsc::Receiver<u32>,
) {
    let (acked_tx, acked_rx) = std::sync::mpsc::channel::<u32>();
    let task = runtime.spawn(async move {
        let producer = Producer::new(
            ProducerConfig::new(config)
                .acks(Acks::All)
                .linger(Duration::from_millis(2)),
        )
        .await
        .expect("producer");
        let mut acknowledged = Vec::with_capacity(records as usize);
        let mut pending = std::collections::VecDeque::new();
        for i in 0..records {
            let record = ProducerRecord::new(topic)
                .partition(0)
                .key(format!("key-{}", i % 7))
                .value(format!("value-{i}"));
            pending.push_back((i, producer.send(record).await.expect("send")));
            // Keep a bounded window in flight, so faults land mid-stream.
            while pending.len() > 200 {
                let (i, delivery) = pending.pop_front().expect("pending");
                let delivered = delivery.await.expect("no failed delivery");
                acknowledged.push((i, delivered.offset.expect("an offset")));
                let _ = acked_tx.send(i);
            }
        }
        producer.close().await.expect("close");
        for (i, delivery) in pending {
            let delivered = delivery.await.expect("no failed delivery");
            acknowledged.push((i, delivered.offset.expect("an offset")));
        }
        acknowledged
    });
    (task, acked_rx)
}

/// Waits until `count` records are acknowledged.
fn wait_acknowledged(acked: &std::sync::mpsc::Receiver<u32>, count: u32) {
    while acked
        .recv_timeout(Duration::from_secs(60))
        .expect("records acknowledged")
        < count
    {}
}

/// Reads partition 0 of `topic` from the start through `brokers` and checks the checker's
/// rules: every acknowledged record is there exactly once, at its acknowledged offset, and
/// each key's records are in the order they were sent.
fn check_acknowledged(
    runtime: &tokio::runtime::Runtime,
    cluster: &Cluster,
    brokers: &[u64],
    topic: &'static str,
    acknowledged: &[(u32, u64)],
) {
    let config = ClientConfig::new(
        brokers
            .iter()
            .map(|&id| cluster.brokers[id as usize - 1].process.listen.clone()),
    )
    .request_timeout(Duration::from_secs(10))
    .retry_backoff(Duration::from_millis(20), Duration::from_millis(200));
    let expected = acknowledged.len();
    let read = runtime.block_on(async move {
        let mut consumer = Consumer::new(
            ConsumerConfig::new(config)
                .auto_offset_reset(OffsetReset::Earliest)
                .fetch_wait_max(Duration::from_millis(100)),
        )
        .expect("consumer");
        consumer.assign([TopicPartition::new(topic, 0)]);
        let mut all = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while all.len() < expected {
            assert!(
                std::time::Instant::now() < deadline,
                "read {} of {expected}",
                all.len()
            );
            all.extend(
                consumer
                    .poll(Duration::from_millis(200))
                    .await
                    .expect("poll"),
            );
        }
        all
    });
    let by_offset: BTreeMap<u64, String> = read
        .iter()
        .map(|r| {
            (
                r.offset,
                String::from_utf8(r.value.as_ref().expect("value").to_vec()).expect("text"),
            )
        })
        .collect();
    assert_eq!(by_offset.len(), read.len(), "no offset twice");
    for (i, offset) in acknowledged {
        assert_eq!(
            by_offset.get(offset),
            Some(&format!("value-{i}")),
            "record {i} acknowledged at offset {offset}"
        );
    }
    let values: std::collections::HashSet<&String> = by_offset.values().collect();
    assert_eq!(values.len(), by_offset.len(), "every record once");
    let mut last: BTreeMap<u32, u32> = BTreeMap::new();
    for value in by_offset.values() {
        let i: u32 = value["value-".len()..].parse().expect("number");
        if let Some(previous) = last.insert(i % 7, i) {
            assert!(
                previous < i,
                "key {} out of order: {previous} then {i}",
                i % 7
            );
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Starts three brokers and waits until all are registered; returns the controller.
fn three_brokers() -> (Cluster, u64) {
    let cluster = Cluster::new(3, 10_000);
    let controller = cluster.wait_for_controller(&[1, 2, 3]);
    wait_until("all brokers registered", Duration::from_secs(20), || {
        cluster
            .describe(controller)
            .is_some_and(|v| v.state.brokers.len() == 3)
    });
    (cluster, controller)
}

/// Three brokers, replication factor 3, `acks=all` load from the client; the partition's
/// leader is killed with SIGKILL halfway. The producer finishes with no failed delivery, and
/// every acknowledged record is in the log exactly once, in order, at its acknowledged offset,
/// read through the new leader; the two survivors' copies are the same bytes.
#[test]
fn sigkill_of_the_leader_loses_nothing_acknowledged() {
    let _serial = serial();
    let (mut cluster, _) = three_brokers();
    cluster.create_topic("failover", 1, 3).expect("create");
    let controller = wait_in_sync(&cluster, &[1, 2, 3], "failover", 3);
    let victim = cluster.describe(controller).expect("describe").state.topics["failover"]
        .partitions[0]
        .leader
        .expect("a leader");
    let records = 6_000u32;
    let runtime = runtime();
    let (producing, acked) = spawn_producer(&runtime, client_config(&cluster), "failover", records);
    wait_acknowledged(&acked, records / 3);
    cluster.broker(victim).kill9();
    let acknowledged = runtime.block_on(producing).expect("producer task");
    assert_eq!(acknowledged.len(), records as usize);
    let survivors: Vec<u64> = (1..=3).filter(|&id| id != victim).collect();
    check_acknowledged(&runtime, &cluster, &survivors, "failover", &acknowledged);

    // The survivors agree byte for byte once both are in sync.
    wait_in_sync(&cluster, &survivors, "failover", 2);
    for &id in &survivors {
        assert!(cluster.broker(id).terminate().success());
    }
    let copies: Vec<_> = survivors
        .iter()
        .map(|&id| segment_files(cluster.brokers[id as usize - 1].dir(), "failover"))
        .collect();
    assert_eq!(copies[0].len(), copies[1].len());
    for (key, path) in &copies[0] {
        assert!(
            std::fs::read(path).expect("segment")
                == std::fs::read(&copies[1][key]).expect("segment"),
            "{key:?} differs between the survivors"
        );
    }
}

/// SIGKILL of all three brokers at once under `acks=all` load; all three restart on their
/// data: the producer's retries finish every delivery, and nothing acknowledged is lost.
#[test]
fn sigkill_of_the_whole_cluster_loses_nothing_acknowledged() {
    let _serial = serial();
    let (mut cluster, _) = three_brokers();
    cluster.create_topic("blackout", 1, 3).expect("create");
    wait_in_sync(&cluster, &[1, 2, 3], "blackout", 3);
    let records = 5_000u32;
    let runtime = runtime();
    let (producing, acked) = spawn_producer(&runtime, client_config(&cluster), "blackout", records);
    wait_acknowledged(&acked, records / 3);
    for id in 1..=3 {
        cluster.broker(id).kill9();
    }
    for id in 1..=3 {
        cluster.broker(id).start();
    }
    let acknowledged = runtime.block_on(producing).expect("producer task");
    assert_eq!(acknowledged.len(), records as usize);
    check_acknowledged(&runtime, &cluster, &[1, 2, 3], "blackout", &acknowledged);
}

/// A follower frozen with SIGSTOP leaves the in-sync set and `acks=all` writes go on without
/// it; after SIGCONT it catches up and rejoins.
#[test]
fn a_stalled_follower_leaves_the_in_sync_set_and_rejoins() {
    let _serial = serial();
    let (mut cluster, _) = three_brokers();
    let config = sluice_broker::metadata::types::TopicConfig {
        replica_lag_time_max_ms: 1_000,
        ..Default::default()
    };
    cluster
        .create_topic_with("stall", 1, 3, Some(config))
        .expect("create");
    let controller = wait_in_sync(&cluster, &[1, 2, 3], "stall", 3);
    let partition =
        cluster.describe(controller).expect("describe").state.topics["stall"].partitions[0].clone();
    let leader = partition.leader.expect("a leader");
    // Freeze a follower that is not the controller, so the metadata keeps its leader.
    let stalled = (1..=3)
        .find(|&id| id != leader && id != controller)
        .expect("a follower");
    let records = 4_000u32;
    let runtime = runtime();
    let (producing, acked) = spawn_producer(&runtime, client_config(&cluster), "stall", records);
    wait_acknowledged(&acked, records / 4);
    cluster.broker(stalled).process.pause();
    wait_until(
        "the stalled follower out of the set",
        Duration::from_secs(20),
        || {
            cluster.describe(controller).is_some_and(|v| {
                !v.state.topics["stall"].partitions[0]
                    .in_sync
                    .contains(&stalled)
            })
        },
    );
    // Writes go on: two in sync meet min_insync_replicas = 2.
    let acknowledged = runtime.block_on(producing).expect("producer task");
    assert_eq!(acknowledged.len(), records as usize);
    cluster.broker(stalled).process.resume();
    wait_in_sync(&cluster, &[1, 2, 3], "stall", 3);
    check_acknowledged(&runtime, &cluster, &[1, 2, 3], "stall", &acknowledged);
}

/// Stops `ids` cleanly (logs flushed and cut to their size) and checks that their copies of
/// `topic` are the same bytes, segment file by segment file.
fn assert_same_bytes_after_stop(cluster: &mut Cluster, ids: &[u64], topic: &str) {
    for &id in ids {
        assert!(
            cluster.broker(id).terminate().success(),
            "broker {id} stopped"
        );
    }
    let copies: Vec<_> = ids
        .iter()
        .map(|&id| segment_files(cluster.brokers[id as usize - 1].dir(), topic))
        .collect();
    assert!(!copies[0].is_empty(), "the topic has segments");
    for (i, other) in copies.iter().enumerate().skip(1) {
        assert_eq!(
            other.keys().collect::<Vec<_>>(),
            copies[0].keys().collect::<Vec<_>>(),
            "broker {} and broker {} hold the same segments",
            ids[0],
            ids[i]
        );
        for (key, path) in &copies[0] {
            assert!(
                std::fs::read(path).expect("segment")
                    == std::fs::read(&other[key]).expect("segment"),
                "{key:?} differs between broker {} and broker {}",
                ids[0],
                ids[i]
            );
        }
    }
}

/// A broker log without its terminal colour sequences.
fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A rolling restart of all three brokers under `acks=all` load: each in turn gets SIGTERM,
/// hands its leaderships to in-sync replicas (controlled shutdown) before it stops, restarts
/// and catches up before the next one goes. The producer sees only retriable errors and ends
/// with no failed delivery; every acknowledged record is read back once, in order, at its
/// offset; the three copies are the same bytes.
#[test]
fn rolling_restart_with_controlled_shutdown_fails_no_delivery() {
    let _serial = serial();
    let (mut cluster, _) = three_brokers();
    cluster.create_topic("rolling", 1, 3).expect("create");
    let controller = wait_in_sync(&cluster, &[1, 2, 3], "rolling", 3);
    // The partition's leader goes first, so the test moves a leadership under load.
    let leader = cluster.describe(controller).expect("describe").state.topics["rolling"].partitions
        [0]
    .leader
    .expect("a leader");
    let order: Vec<u64> = std::iter::once(leader)
        .chain((1..=3).filter(|&id| id != leader))
        .collect();
    let records = 9_000u32;
    let runtime = runtime();
    let (producing, acked) = spawn_producer(&runtime, client_config(&cluster), "rolling", records);
    for (step, &id) in order.iter().enumerate() {
        wait_acknowledged(&acked, records / 5 * (step as u32 + 1));
        let epoch_before = cluster
            .describe(order[(step + 1) % 3])
            .expect("describe")
            .state
            .topics["rolling"]
            .partitions[0]
            .leader_epoch;
        let led = cluster.describe(id).expect("describe").state.topics["rolling"].partitions[0]
            .leader
            == Some(id);
        assert!(
            cluster.broker(id).terminate().success(),
            "broker {id} stopped cleanly"
        );
        // It stopped only once the metadata showed it leading nothing (its log says so), so a
        // leadership it held has moved to an in-sync replica, epoch + 1.
        let log = without_ansi(
            &std::fs::read_to_string(cluster.broker(id).process.log_path()).expect("log"),
        );
        assert!(
            log.contains("controlled shutdown: no leadership left to move")
                && log.contains("still_leading=0"),
            "broker {id} stopped leading before it stopped"
        );
        if led {
            let survivor = order[(step + 1) % 3];
            wait_until("the new leader applied", Duration::from_secs(10), || {
                cluster.describe(survivor).is_some_and(|view| {
                    let p = &view.state.topics["rolling"].partitions[0];
                    p.leader.is_some_and(|l| l != id) && p.leader_epoch > epoch_before
                })
            });
        }
        cluster.broker(id).start();
        wait_in_sync(&cluster, &[1, 2, 3], "rolling", 3);
    }
    let acknowledged = runtime.block_on(producing).expect("producer task");
    assert_eq!(acknowledged.len(), records as usize);
    check_acknowledged(&runtime, &cluster, &[1, 2, 3], "rolling", &acknowledged);
    assert_same_bytes_after_stop(&mut cluster, &[1, 2, 3], "rolling");
}

/// Sends records `value-{i}` for `numbers` to partition 0 of `topic` with `acks=all` and
/// returns (i, offset) for each; any failed delivery fails the test.
fn produce_numbers(
    runtime: &tokio::runtime::Runtime,
    config: ClientConfig,
    topic: &'static str,
    numbers: std::ops::Range<u32>,
) -> Vec<(u32, u64)> {
    runtime.block_on(async move {
        let producer = Producer::new(ProducerConfig::new(config).acks(Acks::All))
            .await
            .expect("producer");
        let mut deliveries = Vec::new();
        for i in numbers {
            let record = ProducerRecord::new(topic)
                .partition(0)
                .key(format!("key-{}", i % 7))
                .value(format!("value-{i}"));
            deliveries.push((i, producer.send(record).await.expect("send")));
        }
        producer.close().await.expect("close");
        let mut acknowledged = Vec::new();
        for (i, delivery) in deliveries {
            let delivered = delivery.await.expect("no failed delivery");
            acknowledged.push((i, delivered.offset.expect("an offset")));
        }
        acknowledged
    })
}

/// One `acks=all` produce of `records` records `isolated-{k}`, straight to the shard at
/// `address` (no client library, so no retry elsewhere): the partition's error code.
fn produce_raw_acks_all(address: &str, topic: &str, records: u32, timeout_ms: u32) -> ErrorCode {
    use sluice_protocol::native::{
        decode_control, encode_control, encode_request, split_response, ApiKey, ProducePartition,
        ProduceRequest, ProduceResponse,
    };
    use std::io::{Read, Write};
    let mut builder = sluice_protocol::BatchBuilder::new(sluice_protocol::BatchOptions::default());
    for k in 0..records {
        builder.push(
            1_700_000_000_000,
            Some(b"isolated"),
            Some(format!("isolated-{k}").as_bytes()),
            &[],
        );
    }
    let batch = builder.finish();
    let request = ProduceRequest {
        acks: sluice_protocol::native::Acks::All,
        timeout_ms,
        partitions: vec![ProducePartition {
            topic: topic.into(),
            partition: 0,
            batch_len: batch.len() as u32,
        }],
    };
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the leader");
    stream
        .set_read_timeout(Some(Duration::from_millis(u64::from(timeout_ms) + 30_000)))
        .expect("timeout");
    let control = encode_control(&request);
    let mut frame = encode_request(ApiKey::Produce, 0, 1, &control, batch.len());
    frame.extend_from_slice(&batch);
    stream.write_all(&frame).expect("send");
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("response length");
    let mut frame = vec![0u8; u32::from_le_bytes(len) as usize];
    stream.read_exact(&mut frame).expect("response");
    let parsed = split_response(&frame).expect("a response frame");
    assert_eq!(parsed.frame_error, 0, "the request is well formed");
    decode_control::<ProduceResponse>(parsed.control)
        .expect("a produce response")
        .partitions[0]
        .error
}

/// A real network partition (network namespaces, see `common::netns`): the partition's leader
/// is cut off from the other two brokers. It acknowledges no `acks=all` produce sent straight
/// to it; the majority side elects a new leader and goes on acknowledging; after healing, the
/// old leader's divergent suffix (what it appended while cut off) is truncated, every
/// acknowledged record is read back once at its offset, and the three copies are the same
/// bytes. Skipped, saying why, where namespaces cannot be made (not root, no `ip`).
#[test]
fn a_partitioned_leader_acknowledges_nothing_and_its_suffix_is_truncated() {
    let _serial = serial();
    let net = match common::netns::Netns::create(3) {
        Ok(net) => net,
        Err(reason) => {
            eprintln!("skipped: cannot create network namespaces: {reason}");
            return;
        }
    };
    net.enter_hub().expect("enter the hub namespace");
    let mut cluster = Cluster::in_namespaces(&net, 3, 10_000);
    let controller = cluster.wait_for_controller(&[1, 2, 3]);
    wait_until("all brokers registered", Duration::from_secs(30), || {
        cluster
            .describe(controller)
            .is_some_and(|v| v.state.brokers.len() == 3)
    });
    cluster.create_topic("split", 1, 3).expect("create");
    let controller = wait_in_sync(&cluster, &[1, 2, 3], "split", 3);
    let view = cluster.describe(controller).expect("describe");
    let before = view.state.topics["split"].partitions[0].clone();
    let leader = before.leader.expect("a leader");
    let shard = before
        .replicas
        .iter()
        .find(|r| r.broker == leader)
        .expect("the leader is a replica")
        .shard;
    let leader_shard = view.state.brokers[&leader].shard_addresses[shard as usize].clone();
    let majority: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let runtime = runtime();
    let mut acknowledged = produce_numbers(&runtime, client_config(&cluster), "split", 0..1_000);

    net.isolate(leader);
    // Straight to the cut-off leader: appended there, never acknowledged.
    let refused = produce_raw_acks_all(&leader_shard, "split", 50, 3_000);
    eprintln!("the isolated leader answered {refused:?}");
    assert_ne!(
        refused,
        ErrorCode::None,
        "an isolated leader acknowledged acks=all"
    );
    // The majority elects a new leader among its in-sync replicas and goes on.
    wait_until(
        "a leader on the majority side",
        Duration::from_secs(60),
        || {
            majority.iter().any(|&id| {
                cluster.describe(id).is_some_and(|v| {
                    let p = &v.state.topics["split"].partitions[0];
                    p.leader.is_some_and(|l| majority.contains(&l))
                        && p.leader_epoch > before.leader_epoch
                })
            })
        },
    );
    let majority_config = ClientConfig::new(
        majority
            .iter()
            .map(|&id| cluster.brokers[id as usize - 1].process.listen.clone()),
    )
    .request_timeout(Duration::from_secs(10))
    .retry_backoff(Duration::from_millis(20), Duration::from_millis(200));
    acknowledged.extend(produce_numbers(
        &runtime,
        majority_config,
        "split",
        1_000..2_000,
    ));

    net.heal();
    wait_in_sync(&cluster, &[1, 2, 3], "split", 3);
    // Everything acknowledged, once, at its offset (a surviving `isolated-` record would
    // break the count or the numbering)...
    check_acknowledged(&runtime, &cluster, &[1, 2, 3], "split", &acknowledged);
    // ...and the old leader's copy is the others' byte for byte: its suffix is gone.
    assert_same_bytes_after_stop(&mut cluster, &[1, 2, 3], "split");
}

/// Partition reassignment under `acks=all` load, through the client's admin API: a partition
/// on two brokers moves its leader's replica to the third broker. The new replica catches up
/// as an extra follower, joins the in-sync set, and only then is the old one dropped (its
/// leadership moving to an in-sync target replica, its directory deleted). Nothing
/// acknowledged is lost, the moved replica holds the same bytes as the one that stayed, the
/// preferred leader (the new replica) can then be elected, and the topic can grow.
#[test]
fn reassignment_under_load_moves_a_replica_with_the_same_bytes() {
    let _serial = serial();
    let (mut cluster, _) = three_brokers();
    cluster.create_topic("moving", 1, 2).expect("create");
    let controller = wait_in_sync(&cluster, &[1, 2, 3], "moving", 2);
    let before = cluster.describe(controller).expect("describe").state.topics["moving"].partitions
        [0]
    .clone();
    let old_leader = before.leader.expect("a leader");
    let stays = before
        .replicas
        .iter()
        .map(|r| r.broker)
        .find(|&b| b != old_leader)
        .expect("a follower");
    let newcomer = (1..=3)
        .find(|b| before.replicas.iter().all(|r| r.broker != *b))
        .expect("a broker without a replica");
    let records = 8_000u32;
    let runtime = runtime();
    let (producing, acked) = spawn_producer(&runtime, client_config(&cluster), "moving", records);
    wait_acknowledged(&acked, records / 4);
    let admin = sluice_client::Admin::new(client_config(&cluster)).expect("admin");
    runtime
        .block_on(admin.reassign_partition("moving", 0, &[newcomer, stays]))
        .expect("reassignment started");
    // A second move while this one runs is refused with a typed error.
    let refused = runtime
        .block_on(admin.reassign_partition("moving", 0, &[old_leader, stays]))
        .expect_err("one reassignment at a time");
    assert!(
        matches!(
            refused,
            sluice_client::Error::Broker {
                code: ErrorCode::ReassignmentInProgress,
                ..
            }
        ) || runtime
            .block_on(admin.partitions("moving"))
            .is_ok_and(|p| p[0].replicas == vec![newcomer, stays]),
        "{refused:?}"
    );
    wait_until(
        "the reassignment completed",
        Duration::from_secs(60),
        || {
            runtime.block_on(admin.partitions("moving")).is_ok_and(|p| {
                let p = &p[0];
                p.replicas == vec![newcomer, stays]
                    && p.in_sync.len() == 2
                    && p.leader.is_some_and(|l| l != old_leader)
            })
        },
    );
    let acknowledged = runtime.block_on(producing).expect("producer task");
    assert_eq!(acknowledged.len(), records as usize);
    // The dropped replica's directory is deleted.
    wait_until("the old replica deleted", Duration::from_secs(30), || {
        segment_files(cluster.brokers[old_leader as usize - 1].dir(), "moving").is_empty()
    });
    // The new replica is the preferred leader; electing it is a leadership move, epoch + 1.
    runtime
        .block_on(admin.elect_preferred_leader("moving", 0))
        .expect("preferred leader elected");
    let p = runtime
        .block_on(admin.partitions("moving"))
        .expect("partitions")[0]
        .clone();
    assert_eq!(p.leader, Some(newcomer));
    check_acknowledged(
        &runtime,
        &cluster,
        &[stays, newcomer],
        "moving",
        &acknowledged,
    );
    // A topic grows: its new partitions get leaders, and shrinking is refused.
    runtime
        .block_on(admin.create_topic("growing", 1, 2))
        .expect("create");
    runtime
        .block_on(admin.add_partitions("growing", 3))
        .expect("partitions added");
    assert_eq!(
        runtime
            .block_on(admin.partition_count("growing"))
            .expect("count"),
        3
    );
    let refused = runtime
        .block_on(admin.add_partitions("growing", 2))
        .expect_err("fewer partitions");
    assert!(
        matches!(
            refused,
            sluice_client::Error::Broker {
                code: ErrorCode::InvalidPartitions,
                ..
            }
        ),
        "{refused:?}"
    );
    wait_in_sync(&cluster, &[1, 2, 3], "moving", 2);
    assert!(cluster.broker(old_leader).terminate().success());
    assert_same_bytes_after_stop(&mut cluster, &[stays, newcomer], "moving");
}

const SEED_ENV: &str = "SLUICE_REPLICATION_SEED";

/// The run's seed: `SLUICE_REPLICATION_SEED` reproduces a run's fault schedule.
fn seed(default: u64) -> u64 {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("seed {seed} ({SEED_ENV}={seed} reproduces the fault schedule)");
    seed
}

/// One fault, on one broker at a time (a minority: `acks=all` can always go on).
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL, then a restart on the same data after the pause.
    Kill(u64, Duration),
    /// SIGSTOP, then SIGCONT after the pause.
    Stop(u64, Duration),
    /// Cut off from the other brokers (network namespaces), healed after the pause.
    Partition(u64, Duration),
}

/// A Jepsen-style queue test: `acks=all` producer and a tailing consumer run while seeded
/// faults (SIGKILL and restart, SIGSTOP and SIGCONT, a network partition isolating one broker;
/// one broker at a time) hit the cluster. The brokers run in network namespaces when they can
/// be made (else on loopback, without the partition fault, saying so).
/// Checked at the end, against a full read of the partition: every acknowledged record is
/// there exactly once at its acknowledged offset, in per-key order; every record the tailing
/// consumer saw during the run is still at the offset where it saw it (nothing a consumer saw
/// ever disappeared); the producer had no failed delivery.
#[test]
fn seeded_faults_lose_nothing_acknowledged_and_nothing_seen() {
    let _serial = serial();
    let seed = seed(0x5eed_0001);
    let mut rng = common::Rng(seed);
    let net = match common::netns::Netns::create(3) {
        Ok(net) => {
            net.enter_hub().expect("enter the hub namespace");
            Some(net)
        }
        Err(reason) => {
            eprintln!("no network partitions in this run: {reason}");
            None
        }
    };
    let mut cluster = match &net {
        Some(net) => Cluster::in_namespaces(net, 3, 10_000),
        None => Cluster::new(3, 10_000),
    };
    let controller = cluster.wait_for_controller(&[1, 2, 3]);
    wait_until("all brokers registered", Duration::from_secs(30), || {
        cluster
            .describe(controller)
            .is_some_and(|v| v.state.brokers.len() == 3)
    });
    let config = sluice_broker::metadata::types::TopicConfig {
        replica_lag_time_max_ms: 1_000,
        ..Default::default()
    };
    cluster
        .create_topic_with("queue", 1, 3, Some(config))
        .expect("create");
    wait_in_sync(&cluster, &[1, 2, 3], "queue", 3);

    let records = 8_000u32;
    let runtime = runtime();
    let (producing, acked) = spawn_producer(&runtime, client_config(&cluster), "queue", records);
    // The tailing consumer: what it saw, by offset.
    let seen: std::sync::Arc<std::sync::Mutex<BTreeMap<u64, String>>> = Default::default();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tailing = {
        let seen = std::sync::Arc::clone(&seen);
        let done = std::sync::Arc::clone(&done);
        let config = client_config(&cluster);
        runtime.spawn(async move {
            let mut consumer = Consumer::new(
                ConsumerConfig::new(config)
                    .auto_offset_reset(OffsetReset::Earliest)
                    .fetch_wait_max(Duration::from_millis(100)),
            )
            .expect("consumer");
            consumer.assign([TopicPartition::new("queue", 0)]);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                // Errors while brokers come and go are retried by the next poll.
                if let Ok(batch) = consumer.poll(Duration::from_millis(200)).await {
                    let mut seen = seen.lock().expect("seen");
                    for r in batch {
                        let value = String::from_utf8(r.value.as_ref().expect("value").to_vec())
                            .expect("text");
                        if let Some(earlier) = seen.insert(r.offset, value.clone()) {
                            assert_eq!(
                                earlier, value,
                                "offset {} changed under a consumer",
                                r.offset
                            );
                        }
                    }
                }
            }
        })
    };

    // The fault schedule: a few faults while the producer runs.
    wait_acknowledged(&acked, records / 8);
    let faults: Vec<Fault> = (0..4)
        .map(|_| {
            let broker = rng.range(1, 3);
            let pause = Duration::from_millis(rng.range(300, 2_500));
            let kinds = if net.is_some() { 3 } else { 2 };
            match rng.range(0, kinds - 1) {
                0 => Fault::Kill(broker, pause),
                1 => Fault::Stop(broker, pause),
                _ => Fault::Partition(broker, pause),
            }
        })
        .collect();
    eprintln!("faults: {faults:?}");
    for fault in &faults {
        match *fault {
            Fault::Kill(id, pause) => {
                cluster.broker(id).kill9();
                std::thread::sleep(pause);
                cluster.broker(id).start();
            }
            Fault::Stop(id, pause) => {
                cluster.broker(id).process.pause();
                std::thread::sleep(pause);
                cluster.broker(id).process.resume();
            }
            Fault::Partition(id, pause) => {
                let net = net.as_ref().expect("partitions only with namespaces");
                net.isolate(id);
                std::thread::sleep(pause);
                net.heal();
            }
        }
        // The next fault only once everyone is back in sync: one faulty broker at a time.
        wait_in_sync(&cluster, &[1, 2, 3], "queue", 3);
    }
    let acknowledged = runtime
        .block_on(producing)
        .unwrap_or_else(|e| panic!("seed {seed}: producer: {e}"));
    assert_eq!(acknowledged.len(), records as usize, "seed {seed}");
    check_acknowledged(&runtime, &cluster, &[1, 2, 3], "queue", &acknowledged);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    runtime
        .block_on(tailing)
        .unwrap_or_else(|e| panic!("seed {seed}: consumer: {e}"));

    // Nothing the tailing consumer saw disappeared: a full read has it at the same offset.
    let final_read: BTreeMap<u64, String> = {
        let acknowledged_offsets: BTreeMap<u64, String> = acknowledged
            .iter()
            .map(|(i, o)| (*o, format!("value-{i}")))
            .collect();
        acknowledged_offsets
    };
    let seen = seen.lock().expect("seen");
    assert!(!seen.is_empty(), "seed {seed}: the consumer saw records");
    for (offset, value) in seen.iter() {
        assert_eq!(
            final_read.get(offset),
            Some(value),
            "seed {seed}: the consumer saw {value} at {offset}, which is gone"
        );
    }
}
