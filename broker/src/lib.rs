//! The Sluice broker.
//!
//! Its modules, from the storage engine every other part builds on outwards:
//! - [`storage`]: the partition log (segments on direct I/O, indexes, group commit, recovery);
//! - [`shard`]: how executor threads are made and what each does at start-up;
//! - [`cli`]: the `sluice-broker` command line and start-up;
//! - [`groups`]: consumer groups (the assignors and the group state machine, pure);
//! - [`kafka`]: the Kafka-protocol listener, a translation onto the same handlers;
//! - [`replication`]: partition replication (the leader's in-sync rules, pure);
//! - [`metrics`]: per-shard counters and histograms, and the Prometheus endpoint;
//! - [`limits`]: every fixed maximum, with its reason;
//! - [`notify`]: the single-threaded wake-up primitive the log's tasks use.

pub mod cli;
pub mod groups;
pub mod kafka;
pub mod limits;
pub mod metadata;
pub mod metrics;
pub mod notify;
pub mod replication;
pub mod server;
pub mod shard;
pub mod storage;
