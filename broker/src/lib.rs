//! The Sluice broker.
//!
//! Today this crate holds the storage engine every other part builds on:
//! - [`storage`]: the partition log (segments on direct I/O, indexes, group commit, recovery);
//! - [`shard`]: how executor threads are made and what each does at start-up;
//! - [`reactor`]: the watchdog that wakes an executor sleeping through its own timers;
//! - [`cli`]: the `sluice-broker` command line and start-up;
//! - [`limits`]: every fixed maximum, with its reason;
//! - [`notify`]: the single-threaded wake-up primitive the log's tasks use.

pub mod cli;
pub mod limits;
pub mod metadata;
pub mod notify;
pub mod reactor;
pub mod server;
pub mod shard;
pub mod storage;
