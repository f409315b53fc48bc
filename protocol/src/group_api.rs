//! The native protocol's consumer-group messages (API keys 20–26): finding a group's
//! coordinator, the membership heartbeat that carries subscriptions and assignments (the shape of
//! Kafka's KIP-848 `ConsumerGroupHeartbeat`), offset commit and fetch, and the group admin
//! requests. Framing and the error codes are those of [`crate::native`]; layouts and semantics
//! are in `docs/protocol.md`.

use crate::native::ErrorCode;

/// Where a group's coordinator is: the shard that leads the group's partition of the offsets
/// log.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct FindCoordinatorRequest {
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct FindCoordinatorResponse {
    /// `CoordinatorNotAvailable` while the offsets log is created or has no leader: retry.
    pub error: ErrorCode,
    pub message: String,
    pub broker_id: u64,
    /// The coordinator shard's own address.
    pub address: String,
}

/// One partition of a topic, as groups name them.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct GroupPartition {
    pub topic: String,
    pub partition: u32,
}

/// What a member subscribes to.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Subscription {
    Topics(Vec<String>),
    /// A regular expression (Rust `regex` syntax) matched against whole topic names; topics
    /// created later that match are picked up.
    Pattern(String),
}

/// Member epoch of a heartbeat that joins the group.
pub const JOIN_EPOCH: i32 = 0;
/// Member epoch of a heartbeat that leaves the group.
pub const LEAVE_EPOCH: i32 = -1;
/// Member epoch of a static member's heartbeat that leaves for a restart: it keeps its
/// assignment until its session ends.
pub const STATIC_LEAVE_EPOCH: i32 = -2;

/// A member's heartbeat: joins (`member_epoch` 0), keeps its session, reports what it owns,
/// and receives what it should own.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct GroupHeartbeatRequest {
    pub group: String,
    /// `None` to join; the coordinator issues ids.
    pub member_id: Option<String>,
    /// [`JOIN_EPOCH`], [`LEAVE_EPOCH`], [`STATIC_LEAVE_EPOCH`], or the member's epoch.
    pub member_epoch: i32,
    /// Static membership: a member restarting with the same instance id within its session
    /// gets its assignment back with no rebalance.
    pub instance_id: Option<String>,
    /// The session this member asks for (0: the broker's default), bounded by the broker.
    pub session_timeout_ms: u32,
    /// The server-side assignor the member asks for: `uniform` (sticky, the default), `range`
    /// or `roundrobin`. The first member of an empty group decides (like its session timeout).
    pub assignor: Option<String>,
    /// The subscription: always on join, else only when it changed.
    pub subscription: Option<Subscription>,
    /// What the member owns now: always on join, else when it changed.
    pub owned: Option<Vec<GroupPartition>>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct GroupHeartbeatResponse {
    pub error: ErrorCode,
    pub message: String,
    pub member_id: String,
    /// The member's epoch now; [`LEAVE_EPOCH`] after a leave.
    pub member_epoch: i32,
    /// Heartbeat at least this often.
    pub heartbeat_interval_ms: u32,
    /// The session the coordinator granted.
    pub session_timeout_ms: u32,
    /// What the member should own now: it releases what is missing from this (after
    /// committing), and starts consuming what is new.
    pub assignment: Vec<GroupPartition>,
}

/// Member epoch of a commit made outside any membership (a consumer with `assign`, or an
/// operator's offset reset): accepted only while the group has no members.
pub const NO_MEMBER_EPOCH: i32 = -1;

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct OffsetCommitPartition {
    pub topic: String,
    pub partition: u32,
    /// The next offset the group should read.
    pub offset: u64,
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct OffsetCommitRequest {
    pub group: String,
    pub member_id: Option<String>,
    /// The member's epoch, or [`NO_MEMBER_EPOCH`].
    pub member_epoch: i32,
    pub partitions: Vec<OffsetCommitPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionError {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct OffsetCommitResponse {
    /// A group-level refusal (not the coordinator, fenced member, ...); else per partition.
    pub error: ErrorCode,
    pub message: String,
    pub partitions: Vec<PartitionError>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct OffsetFetchRequest {
    pub group: String,
    /// `None`: every partition the group has an offset for.
    pub partitions: Option<Vec<GroupPartition>>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: u32,
    /// `None`: the group has no offset for this partition.
    pub offset: Option<u64>,
    pub metadata: String,
    /// Milliseconds since the epoch when it was committed.
    pub commit_timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct OffsetFetchResponse {
    pub error: ErrorCode,
    pub message: String,
    pub partitions: Vec<CommittedOffset>,
}

/// The groups one coordinator shard serves (ask every shard for the whole cluster's).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ListGroupsRequest {}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct GroupListing {
    pub group: String,
    /// `Empty`, `Assigning` (members moving toward their target) or `Stable`.
    pub state: String,
    pub members: u32,
    /// `consumer` (KIP-848, the native protocol) or `classic` (Kafka's JoinGroup/SyncGroup).
    pub group_type: String,
    /// The members' protocol type (`consumer` for consumers).
    pub protocol_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ListGroupsResponse {
    pub error: ErrorCode,
    pub groups: Vec<GroupListing>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DescribeGroupRequest {
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub member_epoch: u32,
    pub subscription: Subscription,
    /// What the member holds now (including what it is releasing).
    pub assignment: Vec<GroupPartition>,
    /// What the coordinator's target gives it.
    pub target: Vec<GroupPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DescribeGroupResponse {
    pub error: ErrorCode,
    pub message: String,
    pub group: String,
    pub state: String,
    pub group_epoch: u32,
    pub assignor: String,
    pub members: Vec<MemberDescription>,
    /// Committed offsets (lag is the partition's high watermark minus these: ask its leader).
    pub offsets: Vec<CommittedOffset>,
}

/// Deletes a group with no members: its offsets and state.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DeleteGroupRequest {
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DeleteGroupResponse {
    pub error: ErrorCode,
    pub message: String,
}
