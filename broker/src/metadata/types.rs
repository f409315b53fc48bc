//! The cluster metadata model: what the Raft group replicates, the commands that change it and
//! the typed errors of metadata requests.
//!
//! Every type here is plain data: serde for the Raft log and the wire, rkyv for snapshots.

use std::collections::BTreeMap;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Raft types of the metadata group.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// A broker's liveness as the controller sees it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum BrokerState {
    Alive,
    /// Stopping cleanly (controlled shutdown): it keeps serving, but no leadership moves to it,
    /// it joins no in-sync set and no new partition is placed on it.
    Fenced,
    /// Its lease expired: it leads nothing until it heartbeats again.
    Dead,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Broker {
    pub id: NodeId,
    /// Native-protocol address clients connect to.
    pub address: String,
    /// Metadata (Raft) address.
    pub metadata_address: String,
    pub shards: u32,
    /// One native-protocol address per shard, for clients that connect to the owning shard.
    pub shard_addresses: Vec<String>,
    pub state: BrokerState,
    /// One Kafka-protocol address per shard (each shard is a Kafka node); empty when the
    /// broker's Kafka listener is off.
    #[serde(default)]
    pub kafka_addresses: Vec<String>,
}

/// Durability setting of a topic's partitions, as stored in metadata.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum FlushSetting {
    Always,
    Interval { interval_ms: u64, bytes: u64 },
    Never,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct TopicConfig {
    pub segment_bytes: u64,
    pub segment_age_ms: Option<u64>,
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub flush: FlushSetting,
    pub message_bytes_max: u64,
    /// In-sync replicas (leader included) an `acks=all` produce needs; below it the produce is
    /// refused with `NotEnoughReplicas`. 0 in a create request means the default: 2 for a
    /// replication factor of 3 or more, else 1 (the stored topic holds the resolved value).
    #[serde(default)]
    pub min_insync_replicas: u32,
    /// A follower that has not caught up to the leader's end within this long leaves the
    /// in-sync set.
    #[serde(default = "default_replica_lag_time_max_ms")]
    pub replica_lag_time_max_ms: u64,
    /// Whether a replica that is not in sync may become leader when no in-sync one is alive
    /// (availability over durability: acknowledged records can be lost). Off by default.
    #[serde(default)]
    pub unclean_leader_election: bool,
    /// Kafka's `cleanup.policy`: delete old segments, compact to the latest record per key, or
    /// both.
    #[serde(default)]
    pub cleanup_policy: crate::storage::CleanupPolicy,
}

fn default_replica_lag_time_max_ms() -> u64 {
    10_000
}

impl TopicConfig {
    /// The in-sync minimum a topic of `replication_factor` replicas gets when the request
    /// leaves it at 0.
    pub fn resolved_min_insync(&self, replication_factor: u32) -> u32 {
        match self.min_insync_replicas {
            0 if replication_factor >= 3 => 2,
            0 => 1,
            n => n,
        }
    }
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            segment_bytes: 1 << 30,
            segment_age_ms: Some(7 * 24 * 3600 * 1000),
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            flush: FlushSetting::Interval {
                interval_ms: 5,
                bytes: 4 << 20,
            },
            message_bytes_max: 1 << 20,
            min_insync_replicas: 0,
            replica_lag_time_max_ms: default_replica_lag_time_max_ms(),
            unclean_leader_election: false,
            cleanup_policy: crate::storage::CleanupPolicy::Delete,
        }
    }
}

/// Where one replica of a partition lives.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct ReplicaPlacement {
    pub broker: NodeId,
    pub shard: u32,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct PartitionInfo {
    pub replicas: Vec<ReplicaPlacement>,
    /// `None` when no in-sync replica is alive (the partition is offline).
    pub leader: Option<NodeId>,
    pub leader_epoch: u32,
    pub in_sync: Vec<NodeId>,
    /// Increases with every change of the leader, the in-sync set or the replicas: an in-sync
    /// change proposed against an older one is refused (Kafka's partition epoch).
    #[serde(default)]
    pub partition_epoch: u32,
    /// While a reassignment runs, the replica set it moves to (Kafka's target replicas):
    /// `replicas` then holds the old set followed by the replicas being added, which catch up
    /// as extra followers; once every target replica is in sync the controller completes the
    /// move (`Command::CompleteReassignment`) and the replicas not in the target are dropped.
    #[serde(default)]
    pub target_replicas: Option<Vec<ReplicaPlacement>>,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Topic {
    pub name: String,
    pub id: u64,
    pub replication_factor: u32,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionInfo>,
}

/// The replicated state machine's data.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct ClusterState {
    /// Increases with every applied change.
    pub version: u64,
    pub brokers: BTreeMap<NodeId, Broker>,
    pub topics: BTreeMap<String, Topic>,
    /// Legacy: the first design placed group coordinators here. A group's coordinator is now
    /// the leader of its partition of the offsets log (`groups::coordinator`); the field and
    /// `Command::AssignCoordinator` stay so that old Raft logs and snapshots still decode.
    pub coordinators: BTreeMap<String, ReplicaPlacement>,
    pub next_topic_id: u64,
    /// Producer ids below this have been handed out (in blocks, to brokers' shards).
    pub next_producer_id: u64,
}

/// A change to the metadata, proposed by the controller and applied identically everywhere.
/// Commands carry every decision (placement, leaders) so applying them is deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    RegisterBroker {
        id: NodeId,
        address: String,
        metadata_address: String,
        shards: u32,
        shard_addresses: Vec<String>,
        #[serde(default)]
        kafka_addresses: Vec<String>,
    },
    SetBrokerState {
        id: NodeId,
        state: BrokerState,
    },
    CreateTopic {
        name: String,
        replication_factor: u32,
        config: TopicConfig,
        partitions: Vec<Vec<ReplicaPlacement>>,
    },
    DeleteTopic {
        name: String,
    },
    /// Legacy (see `ClusterState::coordinators`): applied, never proposed any more.
    AssignCoordinator {
        group: String,
        placement: ReplicaPlacement,
    },
    /// Hands out `count` producer ids, unique in the cluster for good.
    AllocateProducerIds {
        count: u64,
    },
    /// Replaces a topic's configuration (checked like a creation's); only the settings in
    /// `topic_config::ALTERABLE` may differ from the topic's current ones.
    AlterTopicConfig {
        name: String,
        config: TopicConfig,
    },
    /// A partition's leader changes its in-sync set (Kafka's AlterPartition). Refused unless
    /// `leader` still leads at `leader_epoch` and the partition is at `partition_epoch`, so a
    /// deposed or stale leader cannot change it.
    AlterInSync {
        topic: String,
        partition: u32,
        leader: NodeId,
        leader_epoch: u32,
        partition_epoch: u32,
        in_sync: Vec<NodeId>,
    },
    /// A broker stopping cleanly asks the controller to take its leaderships first (Kafka's
    /// controlled shutdown): the broker is fenced, every partition it leads moves to another
    /// live in-sync replica (leader epoch + 1), and it leaves the in-sync sets of the partitions
    /// it follows. A partition with no other live in-sync replica keeps it as leader rather than
    /// going offline; the broker asks again while it waits, as followers may catch up.
    ControlledShutdown {
        id: NodeId,
    },
    /// New partitions for an existing topic, placed by the controller (one replica list each),
    /// numbered after the existing ones.
    AddPartitions {
        topic: String,
        partitions: Vec<Vec<ReplicaPlacement>>,
    },
    /// Moves a partition's leadership to its preferred replica (the first), which must be
    /// alive and in sync: leader epoch + 1.
    ElectPreferredLeader {
        topic: String,
        partition: u32,
    },
    /// Starts moving a partition to the replica set `target`: the replicas it adds join as
    /// followers (see `PartitionInfo::target_replicas`).
    ReassignPartition {
        topic: String,
        partition: u32,
        target: Vec<ReplicaPlacement>,
    },
    /// Ends a reassignment whose target replicas are all in sync, at `partition_epoch`: the
    /// replicas outside the target leave (and the leadership moves to the first in-sync target
    /// replica if the leader is one of them, epoch + 1).
    CompleteReassignment {
        topic: String,
        partition: u32,
        partition_epoch: u32,
    },
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Applied {
        version: u64,
    },
    TopicCreated {
        version: u64,
        topic_id: u64,
    },
    ProducerIds {
        version: u64,
        start: u64,
        count: u64,
    },
    Rejected(MetadataError),
}

/// Typed errors of metadata requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetadataError {
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: String },
    #[error("a topic needs between 1 and {max} partitions, not {requested}")]
    InvalidPartitionCount { requested: u32, max: u32 },
    #[error("replication factor {requested} exceeds the {live} live brokers")]
    ReplicationFactorTooLarge { requested: u32, live: u32 },
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("unknown broker {0}")]
    UnknownBroker(NodeId),
    #[error("invalid topic configuration: {0}")]
    InvalidConfig(String),
    #[error("this broker is not the controller; the controller is {}", controller_text(.controller))]
    NotController {
        /// The current controller's id and metadata address, when known.
        controller: Option<(NodeId, String)>,
    },
    #[error("no live broker can coordinate groups")]
    NoLiveBrokers,
    #[error("metadata request failed: {0}")]
    Unavailable(String),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("unknown partition {topic}/{partition}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("broker {leader} at leader epoch {got} does not lead: the leader epoch is {current}")]
    FencedLeaderEpoch {
        leader: NodeId,
        current: u32,
        got: u32,
    },
    #[error("partition epoch {got} is stale: the partition is at {current}")]
    StalePartitionEpoch { current: u32, got: u32 },
    #[error("invalid in-sync set: {0}")]
    InvalidInSync(String),
    #[error("broker {0} is dead: its lease expired")]
    BrokerDead(NodeId),
    #[error("the preferred leader {preferred} of {topic}/{partition} is not alive and in sync")]
    PreferredLeaderNotAvailable {
        topic: String,
        partition: u32,
        preferred: NodeId,
    },
    #[error("invalid reassignment: {0}")]
    InvalidReassignment(String),
    #[error("{topic}/{partition} is being reassigned already")]
    ReassignmentInProgress { topic: String, partition: u32 },
    #[error("the reassignment of {topic}/{partition} cannot complete: {reason}")]
    ReassignmentNotReady {
        topic: String,
        partition: u32,
        reason: String,
    },
}

fn controller_text(controller: &Option<(NodeId, String)>) -> String {
    match controller {
        Some((id, address)) => format!("broker {id} at {address}"),
        None => "not known yet (election in progress)".to_string(),
    }
}
