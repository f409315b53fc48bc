//! The partition log: an append-only sequence of segment files written with direct I/O.
//!
//! This module knows nothing of sockets, requests or Raft: it stores and serves record batches
//! for one partition at a time. Layers inside it, pure first:
//! - [`index`] and [`scan`]: in-memory indexes and the batch scanner (no I/O, shared with tools);
//! - [`epochs`]: the leader-epoch history (pure) and its checkpoint file format;
//! - [`compaction`]: the pure core of log compaction (which records a cleaned batch keeps, how
//!   emptied batches merge) and the batch codecs it needs;
//! - [`buffers`]: write buffers drawn on demand from the shard's budget;
//! - [`cache`]: the shard-wide tail cache of recently written batches;
//! - [`files`]: the shard's bounded descriptor cache for sealed segments;
//! - [`marker`]: the clean-shutdown marker that spares a reopened log its scan;
//! - [`segment`]: segment files on glommio DMA (`ActiveSegment` → `SealedSegment`);
//! - [`log`]: `PartitionLog`, the API the broker uses.

pub mod buffers;
pub mod cache;
pub mod compaction;
pub mod config;
pub mod epochs;
pub mod error;
pub mod files;
pub mod index;
pub mod log;
pub mod marker;
pub mod scan;
pub mod segment;
pub mod sync;

pub use config::{CleanupPolicy, FlushPolicy, LogConfig};
pub use epochs::{EpochEnd, EpochHistory, EpochStart};
pub use error::StorageError;
pub use log::{
    Appended, FileRange, FlushHistograms, LogStats, OffsetSpec, PartitionLog, ReadBatches,
    ReadBound, ReadChunk, RecoveryReport, RetentionReport, SendChunk, SendRead,
};
