//! Reads every partition of a topic from the beginning and prints the records, then keeps
//! waiting for new ones until interrupted (or until `--idle-exit` seconds pass without any).
//!
//! ```sh
//! cargo run -p sluice-client --example consumer -- [BROKER] [TOPIC] [--idle-exit SECONDS]
//! ```

use std::time::{Duration, Instant};

use sluice_client::{
    Admin, ClientConfig, Consumer, ConsumerConfig, Error, OffsetReset, TopicPartition,
};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let idle_exit = args
        .iter()
        .position(|a| a == "--idle-exit")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);
    let mut positional = args
        .iter()
        .filter(|a| !a.starts_with("--") && a.parse::<u64>().is_err());
    let broker = positional
        .next()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:9490".into());
    let topic = positional
        .next()
        .cloned()
        .unwrap_or_else(|| "greetings".into());
    let client = ClientConfig::new([broker]);

    let partitions = Admin::new(client.clone())?.partition_count(&topic).await?;
    let mut consumer =
        Consumer::new(ConsumerConfig::new(client).auto_offset_reset(OffsetReset::Earliest))?;
    consumer.assign((0..partitions).map(|p| TopicPartition::new(topic.as_str(), p)));
    let mut last = Instant::now();
    loop {
        let records = consumer.poll(Duration::from_millis(500)).await?;
        if !records.is_empty() {
            last = Instant::now();
        }
        for r in records {
            let value = r
                .value
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            println!("{}/{} @{}: {value}", r.topic, r.partition, r.offset);
        }
        if idle_exit.is_some_and(|idle| last.elapsed() >= idle) {
            return Ok(());
        }
    }
}
