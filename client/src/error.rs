//! The client's error type: one `thiserror` enum for every failure a caller can see.

use std::time::Duration;

use sluice_protocol::native::ErrorCode;

/// Everything that can go wrong in the client. Cloneable, because one failure (a broken
/// connection, a refused batch) is reported to every record it affects.
///
/// ```no_run
/// # async fn example(producer: sluice_client::Producer) {
/// use sluice_client::{Error, ProducerRecord};
///
/// match producer.send(ProducerRecord::new("orders").value("v")).await {
///     Ok(delivery) => drop(delivery),
///     Err(Error::UnknownTopic { topic }) => eprintln!("create {topic} first"),
///     Err(Error::BufferFull { .. }) => eprintln!("slow down"),
///     Err(other) => eprintln!("send failed: {other}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// None of the bootstrap or known brokers accepted a connection.
    #[error("no broker reachable (tried {tried}): {last}")]
    NoBrokerReachable { tried: String, last: String },
    /// A connection failed or closed while a request was on it.
    #[error("connection to {address} failed: {reason}")]
    Connection { address: String, reason: String },
    /// A request got no response within the request timeout.
    #[error("request to {address} timed out after {after:?}")]
    Timeout { address: String, after: Duration },
    /// The topic does not exist on the cluster.
    #[error("unknown topic {topic:?}")]
    UnknownTopic { topic: String },
    /// The topic exists but has no such partition.
    #[error("topic {topic:?} has {partitions} partitions; {partition} does not exist")]
    UnknownPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    /// One record is larger than the configured `record_bytes_max`.
    #[error("record of {bytes} bytes exceeds record_bytes_max {max}")]
    RecordTooLarge { bytes: usize, max: usize },
    /// The producer's buffer is full and it was configured not to wait (or waiting timed out).
    #[error("producer buffer full ({buffered} of {max} bytes)")]
    BufferFull { buffered: usize, max: usize },
    /// `send` after `close`, or a record still pending when the producer was dropped.
    #[error("the producer is closed")]
    ProducerClosed,
    /// A record could not be delivered within `delivery_timeout`.
    #[error("record not delivered within {after:?}; last error: {last}")]
    DeliveryTimeout { after: Duration, last: String },
    /// The broker refused a request or a partition's part of it.
    #[error("broker refused {what}: {code:?}")]
    Broker { code: ErrorCode, what: String },
    /// A fetch or seek asked for an offset outside the partition's log and
    /// `auto_offset_reset` is `Error`.
    #[error("offset {offset} is out of range for {topic}/{partition} (log {log_start}..{high_watermark})")]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        offset: u64,
        log_start: u64,
        high_watermark: u64,
    },
    /// The consumer is not assigned the partition named.
    #[error("partition {topic}/{partition} is not assigned to this consumer")]
    NotAssigned { topic: String, partition: u32 },
    /// The broker sent something this client cannot decode.
    #[error("protocol error from {address}: {reason}")]
    Protocol { address: String, reason: String },
    /// The broker does not speak a version of an API this client needs.
    #[error("broker {address} does not support {api} version {version}")]
    UnsupportedVersion {
        address: String,
        api: &'static str,
        version: u16,
    },
    /// A fetched batch failed its checks (CRC, framing, decompression).
    #[error("corrupt batch in {topic}/{partition} at offset {offset}: {reason}")]
    CorruptBatch {
        topic: String,
        partition: u32,
        offset: u64,
        reason: String,
    },
    /// A configuration value is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether retrying the same operation later may succeed (the cluster may change under it).
    ///
    /// ```
    /// use sluice_client::Error;
    ///
    /// assert!(Error::Timeout { address: "b1".into(), after: std::time::Duration::from_secs(1) }
    ///     .is_retriable());
    /// assert!(!Error::ProducerClosed.is_retriable());
    /// ```
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::NoBrokerReachable { .. } | Error::Connection { .. } | Error::Timeout { .. } => {
                true
            }
            Error::Broker { code, .. } => retriable_code(*code),
            _ => false,
        }
    }

    pub(crate) fn broker(code: ErrorCode, what: impl Into<String>) -> Error {
        Error::Broker {
            code,
            what: what.into(),
        }
    }
}

/// Error codes after which the same request may succeed once metadata or the broker catches up.
pub(crate) fn retriable_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotLeaderOrWrongShard
            | ErrorCode::UnknownTopicOrPartition
            | ErrorCode::Timeout
            | ErrorCode::Unavailable
            | ErrorCode::StorageFailure
            | ErrorCode::NotController
            // Kafka retries these too: the in-sync set may grow back, metadata catches up.
            | ErrorCode::NotEnoughReplicas
            | ErrorCode::FencedLeaderEpoch
            | ErrorCode::UnknownLeaderEpoch
            // The group's coordinator moved or is loading: find it again and retry.
            | ErrorCode::NotCoordinator
            | ErrorCode::CoordinatorLoadInProgress
            | ErrorCode::CoordinatorNotAvailable
    )
}

/// Codes after which the client's cached metadata is probably stale.
pub(crate) fn stale_metadata_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotLeaderOrWrongShard
            | ErrorCode::UnknownTopicOrPartition
            | ErrorCode::StorageFailure
            | ErrorCode::Unavailable
            | ErrorCode::FencedLeaderEpoch
    )
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
