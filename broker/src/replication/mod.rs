//! Partition replication: followers fetch from their leader, the leader tracks them.
//!
//! - [`isr`] (pure): a leader's view of its followers and the rules that follow from it: the
//!   high watermark, caught-up, leaving and joining the in-sync set.
//!
//! *Planned* (issue 12): the replica fetch handler on the leader's shard and the fetcher on the
//! follower's, built on [`isr`], on the log's follower append and epoch history
//! (`storage::PartitionLog`) and on the controller's fenced in-sync changes
//! (`metadata::types::Command::AlterInSync`).

pub mod isr;
