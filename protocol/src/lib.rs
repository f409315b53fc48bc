//! Sluice's shared formats: the record batch that producers send, brokers store and consumers
//! read, byte for byte the same everywhere and byte for byte Kafka's RecordBatch v2 (see
//! `docs/format.md`), and the native protocol's messages.
//!
//! This crate knows nothing of files, sockets or runtimes: it is pure encoding and validation,
//! and every decoder returns a typed error instead of panicking on any input.

pub mod batch;
pub mod group_api;
pub mod native;
pub mod varint;

pub use batch::{
    set_producer, with_compressed_records, BatchBuilder, BatchError, BatchHeader, BatchIter,
    BatchOptions, Compression, Record, RecordIter, BATCH_HEADER_BYTES, FORMAT_VERSION,
    LOG_OVERHEAD,
};
