//! Records with the same key always go to the same partition, in the order they were sent, even
//! when many tasks send at once: this example sends numbered events for a few accounts from
//! concurrent tasks, reads them back and checks each account's events arrived in order.
//!
//! ```sh
//! cargo run -p sluice-client --example keyed_ordering -- [BROKER]
//! ```

use std::collections::HashMap;
use std::time::Duration;

use sluice_client::{
    key_partition, Admin, ClientConfig, Consumer, ConsumerConfig, Error, ErrorCode, Producer,
    ProducerConfig, ProducerRecord, Seek, TopicPartition,
};

const TOPIC: &str = "accounts";
const PARTITIONS: u32 = 4;
const ACCOUNTS: u32 = 6;
const EVENTS: u32 = 200;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let broker = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9490".into());
    let client = ClientConfig::new([broker]);
    let admin = Admin::new(client.clone())?;
    match admin.create_topic(TOPIC, PARTITIONS, 1).await {
        Ok(())
        | Err(Error::Broker {
            code: ErrorCode::TopicExists,
            ..
        }) => {}
        Err(e) => return Err(e),
    }
    // Where each partition ends now: only what this run sends is checked.
    let mut start = HashMap::new();
    for p in 0..PARTITIONS {
        let tp = TopicPartition::new(TOPIC, p);
        start.insert(p, admin.offset(&tp, Seek::Latest).await?.unwrap_or(0));
    }

    let producer = Producer::new(ProducerConfig::new(client.clone())).await?;
    let mut tasks = Vec::new();
    for account in 0..ACCOUNTS {
        let producer = producer.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("account-{account}");
            for event in 0..EVENTS {
                let record = ProducerRecord::new(TOPIC)
                    .key(key.clone())
                    .value(event.to_string());
                drop(producer.send(record).await?);
            }
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await.expect("sender task")?;
    }
    producer.flush().await?;

    let mut consumer = Consumer::new(ConsumerConfig::new(client))?;
    let assignment: Vec<TopicPartition> = (0..PARTITIONS)
        .map(|p| TopicPartition::new(TOPIC, p))
        .collect();
    consumer.assign(assignment.clone());
    for tp in &assignment {
        consumer
            .seek(tp, Seek::Offset(start[&tp.partition]))
            .await?;
    }
    let mut next: HashMap<String, u32> = HashMap::new();
    let mut received = 0;
    while received < ACCOUNTS * EVENTS {
        let records = consumer.poll(Duration::from_secs(5)).await?;
        if records.is_empty() {
            break;
        }
        for r in records {
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            let event: u32 = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
                .parse()
                .unwrap_or(u32::MAX);
            let expected = next.entry(key.clone()).or_default();
            assert_eq!(event, *expected, "{key} out of order");
            assert_eq!(r.partition, key_partition(key.as_bytes(), PARTITIONS));
            *expected += 1;
            received += 1;
        }
    }
    for (key, n) in &next {
        println!(
            "{key}: {n} events in order on partition {}",
            key_partition(key.as_bytes(), PARTITIONS)
        );
    }
    assert_eq!(received, ACCOUNTS * EVENTS, "every event read back");
    producer.close().await
}
