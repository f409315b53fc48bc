//! Partition replication across real `sluice-broker` processes: followers fetch from their
//! leader, join the in-sync set once caught up, `acks=all` answers only what every in-sync
//! replica has made durable, and the replicas' logs end up byte for byte the same.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{serial, wait_until, Cluster};
use sluice_client::{Acks, ClientConfig, Producer, ProducerConfig, ProducerRecord};

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
