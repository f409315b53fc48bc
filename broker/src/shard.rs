//! Shard start-up: how executor threads are made, and what each does before it touches a file.
//!
//! Every executor thread is made by [`spawn_executor`]: a named thread of our own that makes
//! its executor with `LocalExecutorBuilder::make` and runs one future on it. No tick and no
//! watchdog: the shard that slept through its own timers was glommio 0.9.0 parking with
//! runnable tasks, fixed in the patched glommio (`broker/vendor/README.md`, reproduced by
//! `tests/glommio_patches.rs`).
//!
//! glommio decides whether to poll the device from the first file a thread opens with DMA; if
//! that file is empty, every later DMA read on the thread fails with "Operation not supported"
//! (glommio issues #605 and #670, reproduced on this machine class). The workaround: open and
//! read a non-empty 4 KiB file first, on every executor thread, before anything else.

use std::cell::Cell;
use std::future::Future;
use std::path::Path;

use glommio::io::DmaFile;
use glommio::{LocalExecutorBuilder, Placement};

use crate::storage::error::{io_error, Result, StorageError};

/// The executor builder every shard uses: pinned placement, a 1 ms preemption check, and the
/// registered I/O memory that write buffers come from. The thread's name is given to
/// [`spawn_executor`], which makes the thread.
pub fn executor_builder(placement: Placement) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(placement)
        .preempt_timer(std::time::Duration::from_millis(
            crate::limits::SHARD_PREEMPT_MS,
        ))
        .io_memory(crate::limits::SHARD_IO_MEMORY_BYTES)
}

/// An executor thread from [`spawn_executor`].
#[derive(Debug)]
pub struct ExecutorThread<T> {
    thread: std::thread::JoinHandle<std::result::Result<T, String>>,
}

impl<T> ExecutorThread<T> {
    /// Waits for the executor's future; an error if the executor could not be made or the
    /// thread panicked.
    pub fn join(self) -> std::result::Result<T, String> {
        self.thread
            .join()
            .map_err(|panic| format!("executor thread panicked: {}", panic_message(&panic)))?
    }

    /// The thread's own handle, for a caller that tells a panic apart from an error.
    pub fn into_thread(self) -> std::thread::JoinHandle<std::result::Result<T, String>> {
        self.thread
    }
}

/// Starts a thread named `name` that makes an executor from `builder` and runs `make()` on
/// it. The thread's result is `make()`'s output, or why the executor could not be made.
pub fn spawn_executor<G, F, T>(
    builder: LocalExecutorBuilder,
    name: &str,
    make: G,
) -> std::io::Result<ExecutorThread<T>>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    // Not `LocalExecutorBuilder::spawn`: its errors come back only through the join handle,
    // and a shard's start-up wants the thread's result either way.
    let name = name.to_string();
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let executor = builder
                .make()
                .map_err(|e| format!("cannot make executor {name}: {e}"))?;
            // `make` runs inside the executor: it may spawn tasks or touch the reactor.
            Ok(executor.run(async move { make().await }))
        })?;
    Ok(ExecutorThread { thread })
}

/// The message a thread panicked with, when it is text.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
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
