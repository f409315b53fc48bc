//! Consumer groups: the coordinator's pure parts first.
//!
//! - [`assign`]: the server-side assignors (range, round-robin, sticky), pure functions over
//!   members, subscriptions and partition counts.
//! - [`state`]: one group's state machine (members, epochs, reconciliation, sessions, static
//!   members, commit fencing), pure and model-tested.
//!
//! *Planned* (issue 13): the coordinator that runs these on a shard, the offsets log and the
//! group APIs.

pub mod assign;
pub mod state;
