//! Sluice broker library.
pub mod limits;
pub mod storage;
