//! The partition log: an append-only sequence of segment files on direct I/O.
pub mod cache;
pub mod config;
pub mod error;
pub mod index;
pub mod scan;
