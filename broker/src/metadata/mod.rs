//! The metadata shard: cluster metadata replicated by one Raft group (openraft), on a dedicated
//! thread with a current-thread tokio runtime.
//!
//! - [`types`]: the replicated model ([`types::ClusterState`]), commands, typed errors;
//! - [`state`]: pure logic: validation, placement, deterministic `apply`;
//! - [`store`]: durable Raft log, vote and rkyv snapshots;
//! - [`topic_config`]: a topic's configuration as Kafka-named `key=value` settings (pure);
//! - [`legacy`]: earlier snapshot layouts of the state, converted on read;
//! - [`wire`], [`network`], [`client`]: the metadata port's frames, Raft RPCs, admin client;
//! - [`node`]: the running member: server, controller duties, registration and heartbeats.

pub mod client;
pub mod legacy;
pub mod network;
pub mod node;
pub mod state;
pub mod store;
pub mod topic_config;
pub mod types;
pub mod wire;

pub use client::AdminClient;
pub use node::{MetadataConfig, MetadataNode, NodeError};
pub use types::{ClusterState, MetadataError, NodeId};
pub use wire::{AdminReply, AdminRequest, ClusterView};
