//! Typed errors of the storage layer.
//!
//! Two families: errors caused by the caller's input (`InvalidBatch`, `OffsetOutOfRange`,
//! `NotContiguous`, `EpochRegression`, `KeyRequired`), after
//! which the log is unchanged, and errors of the environment (`Io`, `Corrupt`), after which the
//! broker is expected to stop the process rather than keep a half-working shard serving.

use std::path::PathBuf;

use sluice_protocol::BatchError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("offset {offset} is out of range: the log holds [{log_start}, {log_end})")]
    OffsetOutOfRange {
        offset: u64,
        log_start: u64,
        log_end: u64,
    },
    #[error("corrupt segment {}: at byte {position}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "a replicated batch starts at offset {found}, but the log's next offset is {expected}"
    )]
    NotContiguous { expected: u64, found: u64 },
    #[error(transparent)]
    EpochRegression(#[from] super::epochs::EpochRegression),
    #[error("record {index} of the batch has no key; a compacted log keeps records by key")]
    KeyRequired { index: u32 },
    #[error("invalid log configuration: {0}")]
    Config(String),
    #[error("the log is closed")]
    Closed,
    #[error("the log stopped after an earlier I/O failure: {0}")]
    Failed(String),
}

impl StorageError {
    /// Whether this error means the environment is broken (disk, file system, corrupt data)
    /// rather than the request being wrong.
    pub fn is_environmental(&self) -> bool {
        matches!(
            self,
            StorageError::Io { .. } | StorageError::Corrupt { .. } | StorageError::Failed(_)
        )
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Wraps an I/O error (std or glommio) with the operation and path it came from.
pub(crate) fn io_error<E: Into<std::io::Error>>(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(E) -> StorageError {
    let path = path.into();
    move |source| StorageError::Io {
        op,
        path,
        source: source.into(),
    }
}
