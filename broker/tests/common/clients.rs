//! `sluice-client` against the harness's broker processes: client settings for tests, and a
//! topic creation that returns once every partition is served.

use std::time::{Duration, Instant};

use sluice_client::{Admin, ClientConfig, Seek, TopicPartition};

use super::BrokerProcess;

/// The client settings tests use against a broker of the harness.
pub trait ClientOf {
    fn config(&self) -> ClientConfig;
}

impl ClientOf for BrokerProcess {
    fn config(&self) -> ClientConfig {
        ClientConfig::new([self.listen.clone()])
            .request_timeout(Duration::from_secs(10))
            .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
    }
}

/// Creates a topic, retrying while the broker's metadata node is still electing itself, and
/// returns once every partition is served (its shard has opened the log). A produce with
/// `acks=none` sent before that is dropped without an answer, as Kafka drops it.
pub async fn create_topic(broker: &BrokerProcess, name: &str, partitions: u32) {
    create_topic_on(broker.config(), name, partitions, 1).await
}

/// [`create_topic`] through any client configuration, with a replication factor.
pub async fn create_topic_on(config: ClientConfig, name: &str, partitions: u32, replicas: u32) {
    let admin = Admin::new(config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin.create_topic(name, partitions, replicas).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("create topic {name}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("create topic {name}: {e}"),
        }
    }
    for partition in 0..partitions {
        let tp = TopicPartition::new(name, partition);
        while let Err(e) = admin.offset(&tp, Seek::Latest).await {
            assert!(
                Instant::now() < deadline,
                "{name}/{partition} not served: {e}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
