//! A group member with at-least-once delivery: records are processed, then their offsets are
//! committed. Kill it at any moment and start it again: the group resumes from the last
//! commit, so records processed after that commit are seen again, and none is ever skipped.
//! Run several at once and the group's partitions are shared between them.
//!
//! ```sh
//! cargo run -p sluice-client --example at_least_once -- [BROKER] [TOPIC] [GROUP]
//! ```

use std::time::Duration;

use sluice_client::{
    ClientConfig, Consumer, ConsumerConfig, DeliveryGuarantee, Error, OffsetReset,
    RebalanceListener, TopicPartition,
};

/// Prints the partitions the group moves to and from this member.
struct Announce;

impl RebalanceListener for Announce {
    fn assigned(&mut self, partitions: &[TopicPartition]) {
        eprintln!("assigned {partitions:?}");
    }
    fn revoked(&mut self, partitions: &[TopicPartition]) {
        eprintln!("revoked {partitions:?} (their positions were committed first)");
    }
    fn lost(&mut self, partitions: &[TopicPartition]) {
        eprintln!("lost {partitions:?}");
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let broker = args.next().unwrap_or_else(|| "127.0.0.1:9490".into());
    let topic = args.next().unwrap_or_else(|| "greetings".into());
    let group = args.next().unwrap_or_else(|| "printers".into());

    let config = ConsumerConfig::new(ClientConfig::new([broker]))
        .auto_offset_reset(OffsetReset::Earliest)
        .delivery(DeliveryGuarantee::AtLeastOnce)
        // Commit by hand, after processing; the default (auto-commit at the next poll) gives
        // the same guarantee with less code.
        .auto_commit(false);
    let mut consumer = Consumer::new(config)?;
    consumer.subscribe(&group, [topic.as_str()])?;
    consumer.set_rebalance_listener(Announce);
    loop {
        let records = consumer.poll(Duration::from_millis(500)).await?;
        if records.is_empty() {
            continue;
        }
        for r in &records {
            // "Processing": printing. A crash here repeats these records after a restart.
            let value = r.value.as_deref().map(String::from_utf8_lossy);
            println!("{}/{} @{}: {value:?}", r.topic, r.partition, r.offset);
        }
        consumer.commit().await?;
    }
}
