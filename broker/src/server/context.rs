//! What every connection of a shard shares ([`ShardContext`]), the response type handlers
//! build, and the mapping of storage and metadata errors to the protocol's error codes.

use std::rc::Rc;
use std::time::Duration;

use glommio::sync::Semaphore;
use sluice_protocol::native::{
    encode_control, encode_response_head, EncodeControl, ErrorCode, FrameError,
};
use sluice_protocol::BatchError;

use super::partitions::SharedPartitions;
use super::socket::WatchStats;
use super::MetadataLink;
use crate::metadata::{MetadataError, NodeId};
use crate::notify::Latch;
use crate::storage::{SendChunk, StorageError};

/// What every connection of a shard shares.
#[derive(Debug)]
pub struct ShardContext {
    pub node_id: NodeId,
    pub shard: u32,
    pub topic_defaults: crate::metadata::types::TopicConfig,
    pub partitions: SharedPartitions,
    pub link: MetadataLink,
    /// Bytes of request frames being handled on this shard.
    pub buffered: Rc<Semaphore>,
    /// Fired when the shard stops: connections finish in-flight work and close.
    pub stop: Latch,
    /// Fired when a log fails: the broker must stop.
    pub storage_failed: Latch,
    /// This shard's unused block of producer ids: [next, end).
    pub producer_ids: std::cell::Cell<(u64, u64)>,
    /// This broker's advertised Kafka address of each shard (empty with the Kafka listener
    /// off).
    pub kafka_addresses: Vec<String>,
    /// How long a connection waits on its socket before checking it itself (`socket.rs`).
    pub socket_watch: Duration,
    /// Lost socket readiness events recovered on this shard.
    pub watch_stats: Rc<WatchStats>,
    /// The shard's task queue for fetches (`shard::TaskQueues`).
    pub bulk: glommio::TaskQueueHandle,
    /// How often retention and compaction look at every log of the shard.
    pub retention_check_interval: Duration,
    /// The shard's group coordinator.
    pub groups: Rc<crate::groups::coordinator::Coordinator>,
    /// What this shard counts (`metrics`); only this shard touches it.
    pub metrics: Rc<crate::metrics::ShardMetrics>,
}

/// A response: header and control, then the data parts written as they are.
#[derive(Debug, Default)]
pub struct Response {
    pub head: Vec<u8>,
    pub data: Vec<ResponsePart>,
}

/// A piece of a response after its head: batches as the log hands them out (memory or a file
/// span sent with `sendfile`), or bytes of the response itself between them (a Kafka fetch
/// interleaves each partition's header with its batches).
#[derive(Debug)]
pub enum ResponsePart {
    Send(SendChunk),
    Bytes(Vec<u8>),
}

impl ResponsePart {
    pub fn len(&self) -> usize {
        match self {
            ResponsePart::Send(chunk) => chunk.len(),
            ResponsePart::Bytes(bytes) => bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn response<T: EncodeControl>(correlation_id: u32, control: &T) -> Response {
    let control = encode_control(control);
    Response {
        head: encode_response_head(correlation_id, FrameError::None, &control, 0),
        data: Vec::new(),
    }
}

pub fn frame_error(correlation_id: u32, error: FrameError) -> Response {
    Response {
        head: encode_response_head(correlation_id, error, &[], 0),
        data: Vec::new(),
    }
}

/// Maps a storage error on a produce or fetch to the client's error code.
pub fn storage_code(error: &StorageError) -> ErrorCode {
    match error {
        StorageError::InvalidBatch(BatchError::TooLarge { .. }) => ErrorCode::BatchTooLarge,
        StorageError::InvalidBatch(BatchError::CrcMismatch { .. }) => ErrorCode::CorruptBatch,
        StorageError::InvalidBatch(_) => ErrorCode::InvalidBatch,
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        // Kafka answers INVALID_RECORD: a compacted topic needs a key on every record.
        StorageError::NotContiguous { .. } | StorageError::KeyRequired { .. } => {
            ErrorCode::InvalidBatch
        }
        // The log holds a newer epoch than this shard's view of the leadership: stale.
        StorageError::Closed | StorageError::EpochRegression(_) => ErrorCode::NotLeaderOrWrongShard,
        StorageError::Io { .. }
        | StorageError::Corrupt { .. }
        | StorageError::Failed(_)
        | StorageError::Config(_) => ErrorCode::StorageFailure,
    }
}

pub fn metadata_code(error: &MetadataError) -> ErrorCode {
    match error {
        MetadataError::TopicExists(_) => ErrorCode::TopicExists,
        MetadataError::InvalidTopicName { .. } => ErrorCode::InvalidTopic,
        MetadataError::InvalidPartitionCount { .. } => ErrorCode::InvalidPartitions,
        MetadataError::ReplicationFactorTooLarge { .. } => ErrorCode::InvalidReplicationFactor,
        MetadataError::UnknownTopic(_) => ErrorCode::UnknownTopicOrPartition,
        MetadataError::InvalidConfig(_) => ErrorCode::InvalidConfig,
        MetadataError::NotController { .. } => ErrorCode::NotController,
        MetadataError::UnknownPartition { .. } => ErrorCode::UnknownTopicOrPartition,
        MetadataError::FencedLeaderEpoch { .. } | MetadataError::StalePartitionEpoch { .. } => {
            ErrorCode::NotLeaderOrWrongShard
        }
        MetadataError::InvalidInSync(_) => ErrorCode::InvalidConfig,
        MetadataError::InvalidReassignment(_) => ErrorCode::InvalidReplicationFactor,
        MetadataError::PreferredLeaderNotAvailable { .. } => ErrorCode::PreferredLeaderNotAvailable,
        MetadataError::ReassignmentInProgress { .. } => ErrorCode::ReassignmentInProgress,
        MetadataError::ReassignmentNotReady { .. } => ErrorCode::Unavailable,
        MetadataError::UnknownBroker(_)
        | MetadataError::BrokerDead(_)
        | MetadataError::NoLiveBrokers
        | MetadataError::Unavailable(_)
        | MetadataError::Malformed(_) => ErrorCode::Unavailable,
    }
}

impl ShardContext {
    /// The error for a partition this shard does not serve.
    pub fn missing_partition(&self, topic: &str, partition: u32) -> ErrorCode {
        let state = self.link.state.borrow().clone();
        match state.topics.get(topic) {
            Some(t) if (partition as usize) < t.partitions.len() => {
                ErrorCode::NotLeaderOrWrongShard
            }
            _ => ErrorCode::UnknownTopicOrPartition,
        }
    }

    pub fn report_storage(&self, error: &StorageError) {
        if error.is_environmental() {
            tracing::error!(%error, shard = self.shard, "storage failed");
            self.storage_failed.fire();
        }
    }
}
