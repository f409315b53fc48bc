//! Shard start-up: how executor threads are made, and what each does before it touches a file.
//!
//! Every executor thread is made by [`spawn_with_pulse`] or [`spawn_watched`]: a thread of our
//! own, registered with the reactor watchdog (`reactor.rs`) before its executor first runs, with
//! a reactor tick that beats. glommio can sleep through its own timers here, at start-up too.
//!
//! glommio decides whether to poll the device from the first file a thread opens with DMA; if
//! that file is empty, every later DMA read on the thread fails with "Operation not supported"
//! (glommio issues #605 and #670, reproduced on this machine class). The workaround: open and
//! read a non-empty 4 KiB file first, on every executor thread, before anything else.

use std::cell::Cell;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use glommio::io::DmaFile;
use glommio::{LocalExecutorBuilder, Placement};

use crate::limits::SHARD_REACTOR_TICK;
use crate::reactor::{Pulse, ReactorWatch};
use crate::storage::error::{io_error, Result, StorageError};

/// The executor builder every shard uses: pinned placement, a 1 ms preemption check, and the
/// registered I/O memory that write buffers come from. The thread's name is given to
/// [`spawn_with_pulse`] or [`spawn_watched`], which make the thread.
pub fn executor_builder(placement: Placement) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(placement)
        .preempt_timer(std::time::Duration::from_millis(
            crate::limits::SHARD_PREEMPT_MS,
        ))
        .io_memory(crate::limits::SHARD_IO_MEMORY_BYTES)
}

/// Starts a thread named `name` that makes an executor from `builder`, registers with `pulse`
/// before the executor first runs, and runs `make()` on it next to a reactor tick that beats
/// `pulse` (in the default task queue). The thread's result is `make()`'s output, or why the
/// executor could not be made. Someone must watch `pulse` ([`ReactorWatch`]).
pub fn spawn_with_pulse<G, F, T>(
    builder: LocalExecutorBuilder,
    name: &str,
    pulse: Arc<Pulse>,
    make: G,
) -> std::io::Result<std::thread::JoinHandle<std::result::Result<T, String>>>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    // Not `LocalExecutorBuilder::spawn`: it calls its closure only inside the executor's first
    // task, too late to register a thread whose executor may never run that task.
    let name = name.to_string();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let executor = builder
                .make()
                .map_err(|e| format!("cannot make executor {name}: {e}"))?;
            // Made, not yet run: nothing has slept yet.
            let registration = pulse.register();
            let output = executor.run(async move {
                let beats = Arc::clone(&pulse);
                glommio::spawn_local(async move {
                    loop {
                        beats.beat();
                        glommio::timer::sleep(SHARD_REACTOR_TICK).await;
                    }
                })
                .detach();
                make().await
            });
            drop(registration);
            Ok(output)
        })
}

/// An executor thread with a watchdog of its own, from [`spawn_watched`].
#[derive(Debug)]
pub struct Watched<T> {
    thread: std::thread::JoinHandle<std::result::Result<T, String>>,
    _watch: ReactorWatch,
}

impl<T> Watched<T> {
    /// Waits for the executor's future; an error if the executor could not be made or the
    /// thread panicked.
    pub fn join(self) -> std::result::Result<T, String> {
        self.thread
            .join()
            .map_err(|panic| format!("executor thread panicked: {}", panic_message(&panic)))?
    }
}

/// [`spawn_with_pulse`] with a watchdog thread of its own: for tools, tests and benchmarks that
/// run an executor or two.
pub fn spawn_watched<G, F, T>(
    builder: LocalExecutorBuilder,
    name: &str,
    make: G,
) -> std::io::Result<Watched<T>>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let pulse = Arc::new(Pulse::default());
    let watch = ReactorWatch::start(vec![Arc::clone(&pulse)])?;
    let thread = spawn_with_pulse(builder, name, pulse, make)?;
    Ok(Watched {
        thread,
        _watch: watch,
    })
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
