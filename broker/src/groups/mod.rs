//! Consumer groups: the coordinator's pure parts first.
//!
//! - [`assign`]: the server-side assignors (range, round-robin, sticky), pure functions over
//!   members, subscriptions and partition counts.
//!
//! *Planned* (issue 13): the group state machine (members, epochs, reconciliation, sessions),
//! the offsets log and the group APIs, built on these.

pub mod assign;
