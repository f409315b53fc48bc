//! `sluice-client`: the Rust client of the Sluice broker.
//!
//! - [`Producer`] batches records per partition, sends batches for one broker shard together,
//!   retries with backoff and, with idempotence (on by default), never writes a record twice or
//!   out of order, even across broker restarts.
//! - [`Consumer`] reads assigned partitions from a position (offset, timestamp, earliest,
//!   latest), prefetching with bounded memory and long polling; or joins a consumer group
//!   ([`Consumer::subscribe`]) whose coordinator shares the partitions among its members, with
//!   at-most-once or at-least-once delivery ([`DeliveryGuarantee`]).
//! - [`Admin`] creates, grows and deletes topics, moves partitions and their leadership, looks
//!   up offsets, describes the cluster, topic configurations and brokers' logs, and lists,
//!   describes and deletes groups and resets their offsets.
//! - [`blocking`] wraps all three for synchronous code.
//!
//! All of it is async on tokio. Connections go to the shard that owns each partition (the
//! broker publishes one address per shard), so no request pays a cross-shard hop. Errors are one
//! enum, [`Error`]; nothing in here panics on anything a broker sends.
//!
//! ```no_run
//! use std::time::Duration;
//! use sluice_client::{
//!     Admin, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
//!     Seek, TopicPartition,
//! };
//!
//! # async fn example() -> Result<(), sluice_client::Error> {
//! let client = ClientConfig::new(["127.0.0.1:9490"]);
//! Admin::new(client.clone())?.create_topic("greetings", 1, 1).await?;
//!
//! let producer = Producer::new(ProducerConfig::new(client.clone())).await?;
//! let delivery = producer.send(ProducerRecord::new("greetings").value("hello")).await?;
//! let offset = delivery.await?.offset;
//!
//! let mut consumer = Consumer::new(ConsumerConfig::new(client))?;
//! let tp = TopicPartition::new("greetings", 0);
//! consumer.assign([tp.clone()]);
//! consumer.seek(&tp, Seek::Earliest).await?;
//! let records = consumer.poll(Duration::from_secs(1)).await?;
//! assert_eq!(Some(records[0].offset), offset);
//! # Ok(()) }
//! ```

mod admin;
pub mod blocking;
mod cluster;
mod compression;
mod config;
mod connection;
mod consumer;
mod error;
mod group;
pub mod limits;
mod partitioner;
mod producer;

pub use admin::{Admin, GroupDescription, GroupListing, GroupMember, GroupOffset, PartitionState};
pub use config::{Acks, ClientConfig, Compression, ConsumerConfig, OffsetReset, ProducerConfig};
pub use consumer::{Consumer, ConsumerRecord, Seek, TopicPartition};
pub use error::{Error, Result};
pub use group::{DeliveryGuarantee, RebalanceListener, Subscription};
pub use partitioner::{key_partition, murmur2, DefaultPartitioner, Partitioner};
pub use producer::{Delivery, Producer, ProducerRecord, RecordMetadata};
pub use sluice_protocol::native::ErrorCode;
/// What [`Admin::describe_cluster`], [`Admin::describe_logs`] and [`Admin::describe_latency`]
/// return: the protocol's own answers (`docs/protocol.md`).
pub use sluice_protocol::native::{
    BrokerInfo, DescribeLatencyResponse, DescribeLogsResponse, LatencyBucket, LogDescription,
    MetadataResponse, PartitionMetadata, TopicMetadata,
};
