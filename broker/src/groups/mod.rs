//! Consumer groups: the coordinator's pure parts first.
//!
//! - [`assign`]: the server-side assignors (range, round-robin, sticky), pure functions over
//!   members, subscriptions and partition counts.
//! - [`state`]: one group's state machine (members, epochs, reconciliation, sessions, static
//!   members, commit fencing), pure and model-tested.
//!
//! - [`classic`]: one classic group's state machine (Kafka's JoinGroup/SyncGroup protocol,
//!   client-side assignment), pure; the Kafka listener's groups use it.
//! - [`records`]: the offsets log's records (keys, offsets, group state), pure.
//! - [`coordinator`]: one shard's coordinator, which runs the state machine for the groups
//!   whose partition of the offsets log the shard leads and persists them there.

pub mod assign;
pub mod classic;
pub mod coordinator;
pub mod records;
pub mod state;
