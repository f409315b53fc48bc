//! The data plane: thread-per-core shards serving the native protocol.
//!
//! Each shard is a glommio executor pinned to a core. It accepts connections on the broker's main
//! address (one listening socket, each shard accepting on a duplicate of its descriptor) and on
//! its own address (advertised in the metadata, so shard-aware clients connect straight to the
//! shard that owns a partition). The own addresses are fixed by configuration (by default the
//! `--listen` port plus `SHARD_PORT_OFFSET` plus the shard index), not chosen by the kernel at
//! start, so a restart does not move them. A shard opens and serves the logs of the partitions the metadata
//! places on it; nothing else touches them. Requests for a partition owned by another shard of
//! this broker are answered with `NotLeaderOrWrongShard` and the owning shard's address is in
//! the metadata (see `ARCHITECTURE.md`).
//!
//! Shards see cluster metadata through a tokio `watch` channel fed by the metadata thread, and
//! send the requests that need the controller (create and delete topic) to that thread over a
//! bounded flume channel.

pub mod api;
pub mod connection;
pub mod context;
pub mod fetcher;
pub mod in_sync;
pub mod partitions;
pub mod producers;
pub mod shard;
pub mod socket;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::metadata::{AdminReply, AdminRequest, ClusterState, MetadataError, NodeId};

/// How the broker trades latency for throughput.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Group commit over the topic's flush window; large buffers.
    Throughput,
    /// Flush as soon as data arrives (group commit with no window); latency-sensitive queues.
    Latency,
}

/// Settings every shard of a broker shares.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// The main native-protocol address (all shards accept here).
    pub listen: String,
    /// Each shard's own address, by shard index (`--shard-ports`, or derived from `--listen`):
    /// fixed, so a restarted broker is found where its metadata says.
    pub shard_listen: Vec<std::net::SocketAddr>,
    pub mode: Mode,
    /// Configuration of topics created through this broker.
    pub topic_defaults: crate::metadata::types::TopicConfig,
    /// How often retention and compaction look at every log (`--log-retention-check-interval-ms`).
    pub retention_check_interval: std::time::Duration,
    /// The group coordinators' settings.
    pub groups: crate::groups::coordinator::GroupsConfig,
    /// The Kafka listener, when it is on.
    pub kafka: Option<crate::kafka::KafkaListeners>,
}

/// A request from a shard to the metadata thread, with where to send the answer.
#[derive(Debug)]
pub struct AdminCall {
    pub request: AdminRequest,
    pub reply: flume::Sender<Result<AdminReply, MetadataError>>,
}

/// This broker's view of the metadata Raft group, published by the metadata thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// The controller (Raft leader) this broker knows of.
    pub controller: Option<NodeId>,
    pub term: u64,
    /// Index of the last entry in this broker's Raft log.
    pub last_log_index: u64,
    /// Index of the last entry applied to this broker's state.
    pub applied_index: u64,
}

/// What a shard needs from the metadata thread.
#[derive(Debug, Clone)]
pub struct MetadataLink {
    pub state: watch::Receiver<Arc<ClusterState>>,
    pub admin: flume::Sender<AdminCall>,
    pub raft: watch::Receiver<RaftStatus>,
}

impl MetadataLink {
    /// Sends an admin request to the metadata thread and waits for the answer.
    pub async fn call(&self, request: AdminRequest) -> Result<AdminReply, MetadataError> {
        let (reply, answer) = flume::bounded(1);
        self.admin
            .send_async(AdminCall { request, reply })
            .await
            .map_err(|_| MetadataError::Unavailable("the metadata thread stopped".into()))?;
        answer.recv_async().await.map_err(|_| {
            MetadataError::Unavailable("the metadata thread dropped the request".into())
        })?
    }
}
