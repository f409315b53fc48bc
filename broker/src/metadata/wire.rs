//! The metadata port's wire format: Raft RPCs between brokers and admin requests from tools.
//!
//! A frame is `[u32 little-endian length][u8 version][JSON body]`, the length covering the
//! version byte and the body. A connection carries one request at a time, each answered by one
//! response frame, so no correlation id is needed. A frame of another version, an oversized frame
//! or an undecodable body is answered with `WireResponse::Error` and the connection is closed.
//! Documented in `docs/protocol.md`.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::types::{ClusterState, MetadataError, NodeId, TopicConfig, TypeConfig};
use crate::limits::METADATA_FRAME_BYTES_MAX;

pub const WIRE_VERSION: u8 = 1;

/// Requests administrators and brokers send to the controller (or any broker, for `Describe`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    CreateTopic {
        name: String,
        partitions: u32,
        replication_factor: u32,
        config: Option<TopicConfig>,
    },
    DeleteTopic {
        name: String,
    },
    /// The metadata as this broker has applied it, and who it believes the controller is.
    Describe,
    RegisterBroker {
        id: NodeId,
        address: String,
        metadata_address: String,
        shards: u32,
        shard_addresses: Vec<String>,
        #[serde(default)]
        kafka_addresses: Vec<String>,
    },
    Heartbeat {
        id: NodeId,
    },
    /// Hands out a block of producer ids.
    AllocateProducerIds {
        count: u64,
    },
    /// Adds a broker to the Raft group: first as a learner, then as a voter.
    AddVoter {
        id: NodeId,
        metadata_address: String,
    },
    /// Changes settings of a topic (`key=value`, `topic_config`'s names; only the
    /// `topic_config::ALTERABLE` ones).
    AlterTopicConfig {
        name: String,
        overrides: Vec<(String, String)>,
    },
    /// A partition leader changes its in-sync set (see `Command::AlterInSync`).
    AlterInSync {
        topic: String,
        partition: u32,
        leader: NodeId,
        leader_epoch: u32,
        partition_epoch: u32,
        in_sync: Vec<NodeId>,
    },
    /// A broker stopping cleanly asks the controller to move its leaderships (see
    /// `Command::ControlledShutdown`); answered once applied, or at once when it would change
    /// nothing.
    ControlledShutdown {
        id: NodeId,
    },
    /// Grows a topic to `count` partitions (more than it has); the controller places the new
    /// ones as it places a new topic's.
    AddPartitions {
        topic: String,
        count: u32,
    },
    /// Moves a partition's leadership to its preferred (first) replica, which must be alive and
    /// in sync; done at once when it leads already.
    ElectPreferredLeader {
        topic: String,
        partition: u32,
    },
    /// Moves a partition to the replicas on `brokers` (the first is the preferred leader):
    /// added replicas catch up as followers, and once all are in sync the controller drops the
    /// others. Answered when the move has started.
    ReassignPartition {
        topic: String,
        partition: u32,
        brokers: Vec<NodeId>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminReply {
    TopicCreated { version: u64, topic_id: u64 },
    ProducerIds { start: u64, count: u64 },
    Done { version: u64 },
    Cluster(Box<ClusterView>),
    HeartbeatAck,
}

/// One broker's view of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    pub node_id: NodeId,
    pub controller: Option<NodeId>,
    pub term: u64,
    pub last_applied_index: Option<u64>,
    pub voters: Vec<NodeId>,
    /// Entries held in this node's Raft log (bounded by snapshots and purging).
    pub log_entries: u64,
    /// Last log index covered by this node's latest snapshot.
    pub snapshot_index: Option<u64>,
    pub state: ClusterState,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum WireRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Admin(AdminRequest),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum WireResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Admin(Result<AdminReply, MetadataError>),
    /// The request could not be read; the connection closes after this.
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("wire version {0} is not supported (expected {WIRE_VERSION})")]
    Version(u8),
    #[error("undecodable frame: {0}")]
    Decode(String),
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWriteExt + Unpin, T: Serialize>(
    writer: &mut W,
    message: &T,
) -> Result<(), WireError> {
    let body = serde_json::to_vec(message).map_err(|e| WireError::Decode(e.to_string()))?;
    if body.len() + 1 > METADATA_FRAME_BYTES_MAX {
        return Err(WireError::TooLarge(body.len() + 1));
    }
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.extend_from_slice(&((body.len() + 1) as u32).to_le_bytes());
    frame.push(WIRE_VERSION);
    frame.extend_from_slice(&body);
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncReadExt + Unpin, T: for<'de> Deserialize<'de>>(
    reader: &mut R,
) -> Result<Option<T>, WireError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > METADATA_FRAME_BYTES_MAX {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    if body[0] != WIRE_VERSION {
        return Err(WireError::Version(body[0]));
    }
    serde_json::from_slice(&body[1..])
        .map(Some)
        .map_err(|e| WireError::Decode(e.to_string()))
}
