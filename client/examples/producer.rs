//! Sends records to a topic and prints where each landed.
//!
//! ```sh
//! cargo run --release --bin sluice-broker &          # a broker on 127.0.0.1:9490
//! cargo run -p sluice-client --example producer -- [BROKER] [TOPIC] [COUNT]
//! ```

use sluice_client::{
    Admin, ClientConfig, Error, ErrorCode, Producer, ProducerConfig, ProducerRecord,
};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let broker = args.next().unwrap_or_else(|| "127.0.0.1:9490".into());
    let topic = args.next().unwrap_or_else(|| "greetings".into());
    let count: u32 = args.next().and_then(|c| c.parse().ok()).unwrap_or(10);
    let client = ClientConfig::new([broker]);

    // Create the topic unless it exists already.
    match Admin::new(client.clone())?.create_topic(&topic, 3, 1).await {
        Ok(()) => println!("created topic {topic} with 3 partitions"),
        Err(Error::Broker {
            code: ErrorCode::TopicExists,
            ..
        }) => {}
        Err(e) => return Err(e),
    }

    let producer = Producer::new(ProducerConfig::new(client)).await?;
    let mut deliveries = Vec::new();
    for i in 0..count {
        let record = ProducerRecord::new(topic.as_str()).value(format!("hello #{i}"));
        // The first await queues the record; the delivery resolves once the broker has it.
        deliveries.push(producer.send(record).await?);
    }
    for (i, delivery) in deliveries.into_iter().enumerate() {
        let metadata = delivery.await?;
        println!(
            "hello #{i} -> partition {} offset {}",
            metadata.partition,
            metadata.offset.unwrap_or_default()
        );
    }
    producer.close().await
}
