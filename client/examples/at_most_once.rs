//! A group member with at-most-once delivery: each poll's offsets are committed *before* the
//! records are handed out. Kill it at any moment and start it again: no record is ever seen
//! twice, but records handed out and not yet processed when it died are skipped.
//!
//! ```sh
//! cargo run -p sluice-client --example at_most_once -- [BROKER] [TOPIC] [GROUP]
//! ```

use std::time::Duration;

use sluice_client::{
    ClientConfig, Consumer, ConsumerConfig, DeliveryGuarantee, Error, OffsetReset,
};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let broker = args.next().unwrap_or_else(|| "127.0.0.1:9490".into());
    let topic = args.next().unwrap_or_else(|| "greetings".into());
    let group = args.next().unwrap_or_else(|| "notifiers".into());

    let config = ConsumerConfig::new(ClientConfig::new([broker]))
        .auto_offset_reset(OffsetReset::Earliest)
        .delivery(DeliveryGuarantee::AtMostOnce);
    let mut consumer = Consumer::new(config)?;
    consumer.subscribe(&group, [topic.as_str()])?;
    loop {
        // When this returns, the offsets after these records are already committed.
        for r in consumer.poll(Duration::from_millis(500)).await? {
            let value = r.value.as_deref().map(String::from_utf8_lossy);
            println!("{}/{} @{}: {value:?}", r.topic, r.partition, r.offset);
        }
    }
}
