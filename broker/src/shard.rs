//! Shard start-up: what every broker executor thread does before it touches a file.
//!
//! glommio decides whether to poll the device from the first file a thread opens with DMA; if
//! that file is empty, every later DMA read on the thread fails with "Operation not supported"
//! (glommio issues #605 and #670, reproduced on this machine class). The workaround: open and
//! read a non-empty 4 KiB file first, on every executor thread, before anything else.

use std::cell::Cell;
use std::path::Path;

use glommio::io::DmaFile;
use glommio::{LocalExecutorBuilder, Placement};

use crate::storage::error::{io_error, Result, StorageError};

/// The executor builder every shard uses: pinned placement, a 1 ms preemption check, and the
/// registered I/O memory that write buffers come from.
pub fn executor_builder(placement: Placement, name: &str) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(placement)
        .name(name)
        .preempt_timer(std::time::Duration::from_millis(
            crate::limits::SHARD_PREEMPT_MS,
        ))
        .io_memory(crate::limits::SHARD_IO_MEMORY_BYTES)
}

thread_local! {
    static DMA_PRIMED: Cell<bool> = const { Cell::new(false) };
}

/// Runs the first-DMA-file workaround once per thread, using a scratch file in `dir`.
pub async fn prime_dma_io(dir: &Path) -> Result<()> {
    if DMA_PRIMED.with(Cell::get) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
    let path = dir.join(format!(
        ".dma-prime-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, [0xa5u8; 4096]).map_err(io_error("write", &path))?;
    let outcome = async {
        let file = DmaFile::open(&path)
            .await
            .map_err(io_error("open", &path))?;
        let read = file
            .read_at_aligned(0, 4096)
            .await
            .map_err(io_error("read", &path))?;
        file.close().await.map_err(io_error("close", &path))?;
        if read.len() != 4096 {
            return Err(StorageError::Io {
                op: "read",
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "short DMA read"),
            });
        }
        Ok(())
    }
    .await;
    let removed = std::fs::remove_file(&path).map_err(io_error("remove", &path));
    outcome?;
    removed?;
    DMA_PRIMED.with(|primed| primed.set(true));
    Ok(())
}
