//! The native protocol: length-prefixed frames whose control part is an rkyv archive and whose
//! data part is raw record batches (the storage format, never re-encoded).
//!
//! Request frame (all integers little-endian; layout in `docs/protocol.md`):
//! ```text
//!  0  u32 frame_len        bytes after this field
//!  4  u16 api_key
//!  6  u16 api_version
//!  8  u32 correlation_id
//! 12  u32 control_len      bytes of the rkyv archive
//! 16  ... control          rkyv archive of the API's request type
//!     ... data             record batches (produce), laid end to end
//! ```
//! Response frame:
//! ```text
//!  0  u32 frame_len
//!  4  u32 correlation_id
//!  8  u16 frame_error      FrameError code; 0 when the control part is a response
//! 10  u16 reserved
//! 12  u32 control_len
//! 16  ... control          rkyv archive of the API's response type
//!     ... data             record batches (fetch)
//! ```
//! Responses on a connection come back in request order and carry the correlation id.

use rkyv::rancor;
use rkyv::util::AlignedVec;

/// Bytes before the control part in both directions.
pub const FRAME_HEADER_BYTES: usize = 16;

/// API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ApiKey {
    ApiVersions = 0,
    Metadata = 1,
    CreateTopic = 2,
    DeleteTopic = 3,
    Produce = 4,
    Fetch = 5,
    ListOffsets = 6,
    InitProducerId = 7,
    /// A follower replica's fetch from its leader.
    ReplicaFetch = 8,
    /// Grows a topic's partition count (through the controller).
    AddPartitions = 9,
    /// Moves a partition's leadership to its preferred replica (through the controller).
    ElectPreferredLeader = 10,
    /// Moves a partition to another replica set (through the controller).
    ReassignPartition = 11,
    // Consumer groups (`crate::group_api`).
    FindCoordinator = 20,
    GroupHeartbeat = 21,
    OffsetCommit = 22,
    OffsetFetch = 23,
    ListGroups = 24,
    DescribeGroup = 25,
    DeleteGroup = 26,
    // Operators' requests (the `sluice` tool).
    /// The logs a shard holds: per partition replica, log start and end, high watermark, size.
    DescribeLogs = 40,
    /// A topic's configuration as stored in the metadata.
    DescribeConfigs = 41,
    /// CreateTopic with configuration overrides (`key=value`, Kafka's names).
    CreateTopicWithConfig = 42,
    /// Changes settings of a running topic (the alterable ones).
    AlterConfigs = 43,
    // Performance introspection.
    /// The answering shard's own latency distributions (produce requests, device flushes).
    DescribeLatency = 50,
}

impl ApiKey {
    pub const ALL: [ApiKey; 24] = [
        ApiKey::ApiVersions,
        ApiKey::Metadata,
        ApiKey::CreateTopic,
        ApiKey::DeleteTopic,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::InitProducerId,
        ApiKey::ReplicaFetch,
        ApiKey::AddPartitions,
        ApiKey::ElectPreferredLeader,
        ApiKey::ReassignPartition,
        ApiKey::FindCoordinator,
        ApiKey::GroupHeartbeat,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::ListGroups,
        ApiKey::DescribeGroup,
        ApiKey::DeleteGroup,
        ApiKey::DescribeLogs,
        ApiKey::DescribeConfigs,
        ApiKey::CreateTopicWithConfig,
        ApiKey::AlterConfigs,
        ApiKey::DescribeLatency,
    ];

    pub fn from_u16(value: u16) -> Option<ApiKey> {
        ApiKey::ALL.into_iter().find(|k| *k as u16 == value)
    }

    /// The API's name, as documentation and metrics labels spell it.
    pub fn name(self) -> &'static str {
        match self {
            ApiKey::ApiVersions => "ApiVersions",
            ApiKey::Metadata => "Metadata",
            ApiKey::CreateTopic => "CreateTopic",
            ApiKey::DeleteTopic => "DeleteTopic",
            ApiKey::Produce => "Produce",
            ApiKey::Fetch => "Fetch",
            ApiKey::ListOffsets => "ListOffsets",
            ApiKey::InitProducerId => "InitProducerId",
            ApiKey::ReplicaFetch => "ReplicaFetch",
            ApiKey::AddPartitions => "AddPartitions",
            ApiKey::ElectPreferredLeader => "ElectPreferredLeader",
            ApiKey::ReassignPartition => "ReassignPartition",
            ApiKey::FindCoordinator => "FindCoordinator",
            ApiKey::GroupHeartbeat => "GroupHeartbeat",
            ApiKey::OffsetCommit => "OffsetCommit",
            ApiKey::OffsetFetch => "OffsetFetch",
            ApiKey::ListGroups => "ListGroups",
            ApiKey::DescribeGroup => "DescribeGroup",
            ApiKey::DeleteGroup => "DeleteGroup",
            ApiKey::DescribeLogs => "DescribeLogs",
            ApiKey::DescribeConfigs => "DescribeConfigs",
            ApiKey::CreateTopicWithConfig => "CreateTopicWithConfig",
            ApiKey::AlterConfigs => "AlterConfigs",
            ApiKey::DescribeLatency => "DescribeLatency",
        }
    }

    /// Versions of each API this code speaks: (min, max).
    pub fn versions(self) -> (u16, u16) {
        (0, 0)
    }
}

/// Errors about a frame as a whole (the connection stays open unless the framing is broken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum FrameError {
    None = 0,
    UnsupportedApi = 1,
    UnsupportedVersion = 2,
    MalformedControl = 3,
    FrameTooLarge = 4,
    Throttled = 5,
}

impl FrameError {
    pub fn from_u16(value: u16) -> Option<FrameError> {
        [
            FrameError::None,
            FrameError::UnsupportedApi,
            FrameError::UnsupportedVersion,
            FrameError::MalformedControl,
            FrameError::FrameTooLarge,
            FrameError::Throttled,
        ]
        .into_iter()
        .find(|e| *e as u16 == value)
    }
}

/// Per-partition or per-request error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ErrorCode {
    None,
    UnknownTopicOrPartition,
    /// This broker or shard does not own the partition; refresh metadata.
    NotLeaderOrWrongShard,
    OffsetOutOfRange,
    CorruptBatch,
    BatchTooLarge,
    InvalidBatch,
    TopicExists,
    InvalidTopic,
    InvalidPartitions,
    InvalidReplicationFactor,
    InvalidConfig,
    NotController,
    Timeout,
    /// The broker's storage failed; the broker is stopping.
    StorageFailure,
    Unavailable,
    /// An idempotent producer's batch skips sequence numbers: an earlier batch was lost.
    OutOfOrderSequence,
    /// A newer epoch of this producer id exists.
    ProducerFenced,
    /// `acks=all` with fewer in-sync replicas than the topic's `min_insync_replicas`: nothing
    /// was appended.
    NotEnoughReplicas,
    /// A replica fetch from a broker that is not a replica of the partition.
    NotReplica,
    /// The request's leader epoch is older than the partition's: refresh metadata.
    FencedLeaderEpoch,
    /// The request's leader epoch is newer than this broker knows: its metadata lags; retry.
    UnknownLeaderEpoch,
    /// The preferred replica is not alive and in sync, so it cannot lead.
    PreferredLeaderNotAvailable,
    /// The partition is being reassigned already.
    ReassignmentInProgress,
    /// This shard is not the group's coordinator: find the coordinator again.
    NotCoordinator,
    /// The coordinator is reading the group's state from the offsets log: retry shortly.
    CoordinatorLoadInProgress,
    /// No coordinator now (the offsets log is being created or has no leader): retry.
    CoordinatorNotAvailable,
    /// The group id is empty or too long.
    InvalidGroupId,
    /// The member id is not (or no longer) in the group: rejoin.
    UnknownMemberId,
    /// The member's epoch is not its current one (a zombie, or an answer was lost): rejoin.
    FencedMemberEpoch,
    /// The group has its maximum number of members.
    GroupMaxSizeReached,
    /// A commit for a partition not assigned to the committing member.
    PartitionNotAssigned,
    /// The request needs a group with no members (delete, offsets reset, commits from outside).
    NonEmptyGroup,
    /// The group does not exist.
    GroupIdNotFound,
    /// The subscription is invalid (an unparsable pattern, no topics).
    InvalidSubscription,
    /// An offset commit's metadata string is longer than the broker keeps.
    OffsetMetadataTooLarge,
    /// A group member asked for an assignor the coordinator does not have.
    UnsupportedAssignor,
    /// A new classic group member: join again with the member id this answer carries.
    MemberIdRequired,
    /// The classic group is rebalancing: join again.
    RebalanceInProgress,
    /// A classic group request at another generation than the group's: join again.
    IllegalGeneration,
    /// The member's protocol type or protocols do not match the group's (or the group is of
    /// the other kind: KIP-848 or classic).
    InconsistentGroupProtocol,
    /// Another member joined with this static member's instance id.
    FencedInstanceId,
    /// The session timeout is outside the coordinator's bounds.
    InvalidSessionTimeout,
}

impl ErrorCode {
    /// The code's name, as metrics labels and tools show it.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::None => "None",
            ErrorCode::UnknownTopicOrPartition => "UnknownTopicOrPartition",
            ErrorCode::NotLeaderOrWrongShard => "NotLeaderOrWrongShard",
            ErrorCode::OffsetOutOfRange => "OffsetOutOfRange",
            ErrorCode::CorruptBatch => "CorruptBatch",
            ErrorCode::BatchTooLarge => "BatchTooLarge",
            ErrorCode::InvalidBatch => "InvalidBatch",
            ErrorCode::TopicExists => "TopicExists",
            ErrorCode::InvalidTopic => "InvalidTopic",
            ErrorCode::InvalidPartitions => "InvalidPartitions",
            ErrorCode::InvalidReplicationFactor => "InvalidReplicationFactor",
            ErrorCode::InvalidConfig => "InvalidConfig",
            ErrorCode::NotController => "NotController",
            ErrorCode::Timeout => "Timeout",
            ErrorCode::StorageFailure => "StorageFailure",
            ErrorCode::Unavailable => "Unavailable",
            ErrorCode::OutOfOrderSequence => "OutOfOrderSequence",
            ErrorCode::ProducerFenced => "ProducerFenced",
            ErrorCode::NotEnoughReplicas => "NotEnoughReplicas",
            ErrorCode::NotReplica => "NotReplica",
            ErrorCode::FencedLeaderEpoch => "FencedLeaderEpoch",
            ErrorCode::UnknownLeaderEpoch => "UnknownLeaderEpoch",
            ErrorCode::PreferredLeaderNotAvailable => "PreferredLeaderNotAvailable",
            ErrorCode::ReassignmentInProgress => "ReassignmentInProgress",
            ErrorCode::NotCoordinator => "NotCoordinator",
            ErrorCode::CoordinatorLoadInProgress => "CoordinatorLoadInProgress",
            ErrorCode::CoordinatorNotAvailable => "CoordinatorNotAvailable",
            ErrorCode::InvalidGroupId => "InvalidGroupId",
            ErrorCode::UnknownMemberId => "UnknownMemberId",
            ErrorCode::FencedMemberEpoch => "FencedMemberEpoch",
            ErrorCode::GroupMaxSizeReached => "GroupMaxSizeReached",
            ErrorCode::PartitionNotAssigned => "PartitionNotAssigned",
            ErrorCode::NonEmptyGroup => "NonEmptyGroup",
            ErrorCode::GroupIdNotFound => "GroupIdNotFound",
            ErrorCode::InvalidSubscription => "InvalidSubscription",
            ErrorCode::OffsetMetadataTooLarge => "OffsetMetadataTooLarge",
            ErrorCode::UnsupportedAssignor => "UnsupportedAssignor",
            ErrorCode::MemberIdRequired => "MemberIdRequired",
            ErrorCode::RebalanceInProgress => "RebalanceInProgress",
            ErrorCode::IllegalGeneration => "IllegalGeneration",
            ErrorCode::InconsistentGroupProtocol => "InconsistentGroupProtocol",
            ErrorCode::FencedInstanceId => "FencedInstanceId",
            ErrorCode::InvalidSessionTimeout => "InvalidSessionTimeout",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct InitProducerIdRequest {
    /// Reserved for transactions; must be `None` today.
    pub transactional_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct InitProducerIdResponse {
    pub error: ErrorCode,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ApiVersionsRequest {
    pub client_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ApiRange {
    pub key: u16,
    pub min: u16,
    pub max: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ApiVersionsResponse {
    pub apis: Vec<ApiRange>,
    pub broker_id: u64,
    /// The shard this connection is served by.
    pub shard: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MetadataRequest {
    /// `None`: all topics.
    pub topics: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BrokerInfo {
    pub id: u64,
    pub address: String,
    /// One address per shard: connect there to reach a partition's owning shard directly.
    pub shard_addresses: Vec<String>,
    pub alive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionMetadata {
    pub partition: u32,
    pub leader: Option<u64>,
    pub leader_epoch: u32,
    /// The leader's shard that owns this partition.
    pub shard: u32,
    pub replicas: Vec<u64>,
    pub in_sync: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TopicMetadata {
    pub name: String,
    pub error: ErrorCode,
    pub partitions: Vec<PartitionMetadata>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MetadataResponse {
    pub version: u64,
    pub controller: Option<u64>,
    pub brokers: Vec<BrokerInfo>,
    pub topics: Vec<TopicMetadata>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CreateTopicRequest {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TopicResponse {
    pub error: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DeleteTopicRequest {
    pub name: String,
}

/// Grows `topic` to `count` partitions; answered with a [`TopicResponse`].
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AddPartitionsRequest {
    pub topic: String,
    pub count: u32,
}

/// Moves the leadership of one partition to its preferred (first) replica; answered with a
/// [`TopicResponse`].
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ElectPreferredLeaderRequest {
    pub topic: String,
    pub partition: u32,
}

/// Moves one partition to the replicas on `brokers` (the first is the preferred leader);
/// answered with a [`TopicResponse`] once the move has started.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ReassignPartitionRequest {
    pub topic: String,
    pub partition: u32,
    pub brokers: Vec<u64>,
}

/// Acknowledgement level of a produce request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Acks {
    /// No response is sent.
    None,
    /// Durable on the leader per the partition's flush policy.
    Leader,
    /// Durable on every in-sync replica (below the high watermark); refused with
    /// `NotEnoughReplicas` while fewer than the topic's `min_insync_replicas` are in sync.
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ProducePartition {
    pub topic: String,
    pub partition: u32,
    /// Bytes of this partition's batch in the data part, in order.
    pub batch_len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ProduceRequest {
    pub acks: Acks,
    pub timeout_ms: u32,
    pub partitions: Vec<ProducePartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ProducePartitionResponse {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
    pub base_offset: u64,
    pub log_start: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ProduceResponse {
    pub partitions: Vec<ProducePartitionResponse>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct FetchPartition {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub max_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct FetchRequest {
    pub max_wait_ms: u32,
    pub min_bytes: u32,
    pub max_bytes: u32,
    pub partitions: Vec<FetchPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct FetchPartitionResponse {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
    pub high_watermark: u64,
    pub log_start: u64,
    /// Bytes of whole batches for this partition in the data part, in order.
    pub bytes_len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct FetchResponse {
    pub partitions: Vec<FetchPartitionResponse>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum OffsetQuery {
    Earliest,
    Latest,
    Timestamp(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ListOffsetsPartition {
    pub topic: String,
    pub partition: u32,
    pub query: OffsetQuery,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ListOffsetsRequest {
    pub partitions: Vec<ListOffsetsPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ListOffsetsPartitionResponse {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
    /// `None` when no record is at or after the timestamp.
    pub offset: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ListOffsetsResponse {
    pub partitions: Vec<ListOffsetsPartitionResponse>,
}

/// DescribeLogs: every partition replica the answering shard holds, of `topics` (all when
/// empty). Sent to each shard's own address to see the whole broker.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DescribeLogsRequest {
    pub topics: Vec<String>,
}

/// One partition replica's log, as its shard sees it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LogDescription {
    pub topic: String,
    pub partition: u32,
    /// Whether this replica leads the partition.
    pub leader: bool,
    pub leader_epoch: u32,
    /// The first offset still in the log (retention moves it).
    pub log_start: u64,
    /// The offset the next appended record gets.
    pub log_end: u64,
    /// The end of what this replica has made durable.
    pub durable_end: u64,
    /// Consumers read below it.
    pub high_watermark: u64,
    /// Bytes of the partition's segment files.
    pub size_bytes: u64,
    pub segments: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DescribeLogsResponse {
    pub broker_id: u64,
    pub shard: u32,
    pub logs: Vec<LogDescription>,
}

/// DescribeLatency: the answering shard's latency distributions since it started. Sent to each
/// shard's own address; a reader wanting one interval subtracts two answers.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DescribeLatencyRequest {}

/// One recorded value of a latency distribution and how many samples it holds: every sample
/// in the distribution's bucket that ends at `value_us` (3 significant figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LatencyBucket {
    pub value_us: u64,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DescribeLatencyResponse {
    pub broker_id: u64,
    pub shard: u32,
    /// Produce requests, from the first byte of the frame read to the last byte of the response
    /// written, in µs (non-empty buckets, ascending).
    pub produce: Vec<LatencyBucket>,
    /// Each flush's device time (the write, and the fdatasync when the log syncs apart), in µs.
    pub flush_device: Vec<LatencyBucket>,
}

/// A configuration setting, by Kafka's name (`retention.ms`, `segment.bytes`, …).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ConfigEntry {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DescribeConfigsRequest {
    pub topic: String,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DescribeConfigsResponse {
    pub error: ErrorCode,
    /// Every setting of the topic, sorted by key.
    pub configs: Vec<ConfigEntry>,
}

/// CreateTopic with overrides of the broker's topic defaults; answered with a [`TopicResponse`]
/// (`InvalidConfig` and a message naming the key for an unknown key or a bad value).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CreateTopicWithConfigRequest {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u32,
    pub configs: Vec<ConfigEntry>,
}

/// AlterConfigs: settings to change on a running topic; answered with a [`TopicResponse`] once
/// the answering broker has applied the change (`InvalidConfig` naming the key for one that
/// cannot change after creation or a bad value; nothing changes then).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AlterConfigsRequest {
    pub topic: String,
    pub configs: Vec<ConfigEntry>,
}

/// One partition of a follower's fetch from its leader.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ReplicaFetchPartition {
    pub topic: String,
    pub partition: u32,
    /// The follower's log end: the next offset it needs.
    pub fetch_offset: u64,
    /// The epoch of the follower's last batch (`None` for an empty log): the leader checks that
    /// its own log agrees up to `fetch_offset` in that epoch, else answers `diverging`.
    pub last_fetched_epoch: Option<u32>,
    /// Offsets below this are durable on the follower: what the leader's high watermark counts.
    pub durable_end: u64,
    /// The leader epoch the follower believes current.
    pub leader_epoch: u32,
    pub max_bytes: u32,
}

/// A follower's fetch (Kafka's Fetch from a replica, with KIP-320's divergence check inside):
/// the same zero-copy read path as a consumer's, reading up to the leader's durable end.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ReplicaFetchRequest {
    /// The follower's broker id.
    pub replica_id: u64,
    pub max_wait_ms: u32,
    pub min_bytes: u32,
    pub max_bytes: u32,
    pub partitions: Vec<ReplicaFetchPartition>,
}

/// Where the follower's log leaves the leader's: its last epoch ends at `end_offset` here (the
/// largest epoch at or below the follower's, if the leader never had that one). The follower
/// truncates to the smaller of this and its own end of `epoch`, then fetches again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DivergingEpoch {
    pub epoch: u32,
    pub end_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ReplicaFetchPartitionResponse {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
    pub leader_epoch: u32,
    pub high_watermark: u64,
    pub log_start: u64,
    /// The leader's durable end when the fetch was answered.
    pub durable_end: u64,
    /// Set when the follower's log diverges from the leader's; no data then.
    pub diverging: Option<DivergingEpoch>,
    /// Bytes of whole batches for this partition in the data part, in order.
    pub bytes_len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ReplicaFetchResponse {
    pub partitions: Vec<ReplicaFetchPartitionResponse>,
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameDecodeError {
    #[error("frame of {len} bytes is shorter than its {FRAME_HEADER_BYTES}-byte header")]
    TooShort { len: usize },
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("control part of {control} bytes runs past the {len}-byte frame")]
    ControlOverrun { control: usize, len: usize },
    #[error("control part does not decode: {0}")]
    Control(String),
}

/// The fixed part of a request frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub api_key: u16,
    pub api_version: u16,
    pub correlation_id: u32,
}

/// A request frame split into its parts (borrowing the frame's bytes).
#[derive(Debug, Clone, Copy)]
pub struct RequestFrame<'a> {
    pub header: RequestHeader,
    pub control: &'a [u8],
    pub data: &'a [u8],
}

/// Splits a request frame (without its leading length field, i.e. `frame_len` bytes).
pub fn split_request(frame: &[u8]) -> Result<RequestFrame<'_>, FrameDecodeError> {
    let (header, control, data) = split(frame)?;
    Ok(RequestFrame {
        header: RequestHeader {
            api_key: u16::from_le_bytes([header[0], header[1]]),
            api_version: u16::from_le_bytes([header[2], header[3]]),
            correlation_id: u32::from_le_bytes([header[4], header[5], header[6], header[7]]),
        },
        control,
        data,
    })
}

/// A response frame split into its parts.
#[derive(Debug, Clone, Copy)]
pub struct ResponseFrame<'a> {
    pub correlation_id: u32,
    pub frame_error: u16,
    pub control: &'a [u8],
    pub data: &'a [u8],
}

/// Splits a response frame (without its leading length field).
pub fn split_response(frame: &[u8]) -> Result<ResponseFrame<'_>, FrameDecodeError> {
    let (header, control, data) = split(frame)?;
    Ok(ResponseFrame {
        correlation_id: u32::from_le_bytes([header[0], header[1], header[2], header[3]]),
        frame_error: u16::from_le_bytes([header[4], header[5]]),
        control,
        data,
    })
}

/// Header bytes after the length field, the control part, and the data part of a frame.
type FrameParts<'a> = (&'a [u8], &'a [u8], &'a [u8]);

fn split(frame: &[u8]) -> Result<FrameParts<'_>, FrameDecodeError> {
    let body_start = FRAME_HEADER_BYTES - 4;
    if frame.len() < body_start {
        return Err(FrameDecodeError::TooShort {
            len: frame.len() + 4,
        });
    }
    let control_len = u32::from_le_bytes([frame[8], frame[9], frame[10], frame[11]]) as usize;
    let control_end = body_start
        .checked_add(control_len)
        .filter(|&end| end <= frame.len())
        .ok_or(FrameDecodeError::ControlOverrun {
            control: control_len,
            len: frame.len(),
        })?;
    Ok((
        &frame[..8],
        &frame[body_start..control_end],
        &frame[control_end..],
    ))
}

/// A type that can be sent as a control message (any rkyv-serializable type).
pub trait EncodeControl:
    for<'a> rkyv::Serialize<
    rkyv::api::high::HighSerializer<
        AlignedVec,
        rkyv::ser::allocator::ArenaHandle<'a>,
        rancor::Error,
    >,
>
{
}

impl<T> EncodeControl for T where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >
{
}

/// A type that can be received as a control message: its archive is validated, then deserialized.
pub trait DecodeControl:
    rkyv::Archive<
        Archived: for<'a> rkyv::bytecheck::CheckBytes<
            rkyv::api::high::HighValidator<'a, rancor::Error>,
        > + rkyv::Deserialize<Self, rkyv::api::high::HighDeserializer<rancor::Error>>,
    > + Sized
{
}

impl<T> DecodeControl for T where
    T: rkyv::Archive<
        Archived: for<'a> rkyv::bytecheck::CheckBytes<
            rkyv::api::high::HighValidator<'a, rancor::Error>,
        > + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
    >
{
}

/// Encodes a control message.
pub fn encode_control<T: EncodeControl>(message: &T) -> AlignedVec {
    match rkyv::to_bytes::<rancor::Error>(message) {
        Ok(bytes) => bytes,
        // Serializing plain owned data into a growable buffer cannot fail.
        Err(error) => panic!("rkyv serialization of a control message failed: {error}"),
    }
}

/// Decodes (validating, then deserializing) a control message from untrusted bytes.
pub fn decode_control<T: DecodeControl>(bytes: &[u8]) -> Result<T, FrameDecodeError> {
    // Archives must be aligned; frames read off a socket are not.
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rancor::Error>(&aligned)
        .map_err(|e| FrameDecodeError::Control(e.to_string()))
}

/// Builds a request frame: header, control, then `data` parts.
pub fn encode_request(
    api_key: ApiKey,
    api_version: u16,
    correlation_id: u32,
    control: &[u8],
    data_len: usize,
) -> Vec<u8> {
    let frame_len = FRAME_HEADER_BYTES - 4 + control.len() + data_len;
    let mut out = Vec::with_capacity(4 + frame_len);
    out.extend_from_slice(&(frame_len as u32).to_le_bytes());
    out.extend_from_slice(&(api_key as u16).to_le_bytes());
    out.extend_from_slice(&api_version.to_le_bytes());
    out.extend_from_slice(&correlation_id.to_le_bytes());
    out.extend_from_slice(&(control.len() as u32).to_le_bytes());
    out.extend_from_slice(control);
    out
}

/// Builds the head of a response frame (header and control); `data_len` bytes follow it.
pub fn encode_response_head(
    correlation_id: u32,
    frame_error: FrameError,
    control: &[u8],
    data_len: usize,
) -> Vec<u8> {
    let frame_len = FRAME_HEADER_BYTES - 4 + control.len() + data_len;
    let mut out = Vec::with_capacity(4 + FRAME_HEADER_BYTES + control.len());
    out.extend_from_slice(&(frame_len as u32).to_le_bytes());
    out.extend_from_slice(&correlation_id.to_le_bytes());
    out.extend_from_slice(&(frame_error as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(control.len() as u32).to_le_bytes());
    out.extend_from_slice(control);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn produce_request_round_trips() {
        let request = ProduceRequest {
            acks: Acks::Leader,
            timeout_ms: 500,
            partitions: vec![ProducePartition {
                topic: "orders".into(),
                partition: 3,
                batch_len: 5,
            }],
        };
        let control = encode_control(&request);
        let mut frame = encode_request(ApiKey::Produce, 0, 77, &control, 5);
        frame.extend_from_slice(b"hello");
        let parsed = split_request(&frame[4..]).unwrap();
        assert_eq!(
            parsed.header,
            RequestHeader {
                api_key: ApiKey::Produce as u16,
                api_version: 0,
                correlation_id: 77
            }
        );
        assert_eq!(parsed.data, b"hello");
        assert_eq!(
            decode_control::<ProduceRequest>(parsed.control).unwrap(),
            request
        );
    }

    #[test]
    fn replica_fetch_round_trips() {
        let request = ReplicaFetchRequest {
            replica_id: 2,
            max_wait_ms: 100,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partitions: vec![ReplicaFetchPartition {
                topic: "orders".into(),
                partition: 1,
                fetch_offset: 42,
                last_fetched_epoch: Some(3),
                durable_end: 40,
                leader_epoch: 4,
                max_bytes: 1 << 20,
            }],
        };
        assert_eq!(
            decode_control::<ReplicaFetchRequest>(&encode_control(&request)).unwrap(),
            request
        );
        let response = ReplicaFetchResponse {
            partitions: vec![ReplicaFetchPartitionResponse {
                topic: "orders".into(),
                partition: 1,
                error: ErrorCode::None,
                leader_epoch: 4,
                high_watermark: 40,
                log_start: 0,
                durable_end: 50,
                diverging: Some(DivergingEpoch {
                    epoch: 3,
                    end_offset: 41,
                }),
                bytes_len: 0,
            }],
        };
        assert_eq!(
            decode_control::<ReplicaFetchResponse>(&encode_control(&response)).unwrap(),
            response
        );
    }

    proptest! {
        #[test]
        fn arbitrary_frames_never_panic(bytes: Vec<u8>) {
            if let Ok(frame) = split_request(&bytes) {
                let _ = decode_control::<ProduceRequest>(frame.control);
                let _ = decode_control::<FetchRequest>(frame.control);
                let _ = decode_control::<ReplicaFetchRequest>(frame.control);
                let _ = decode_control::<MetadataRequest>(frame.control);
                let _ = decode_control::<ListOffsetsRequest>(frame.control);
            }
            let _ = split_response(&bytes);
        }

        #[test]
        fn corrupted_control_is_an_error_not_a_panic(flip in 0usize..200, bit in 0u8..8) {
            let request = FetchRequest { max_wait_ms: 5, min_bytes: 1, max_bytes: 1 << 20,
                partitions: vec![FetchPartition { topic: "t".into(), partition: 0, offset: 9, max_bytes: 100 }] };
            let mut control = encode_control(&request).to_vec();
            let at = flip % control.len();
            control[at] ^= 1 << bit;
            let _ = decode_control::<FetchRequest>(&control);
        }
    }
}
