//! Durable syncs shared by a shard's logs: group commit across partitions.
//!
//! A flush writes a log's data with direct I/O; what makes it durable is an fdatasync of the
//! segment file, which costs a journal commit and a device cache flush. A shard with many
//! partitions taking writes would pay one per log per group-commit window, and the device
//! serves them one after another (at 1,000 active partitions, durability cost the throughput
//! mode a factor ~3.4). Here a log's sync joins its shard's *round* for the file system holding
//! it: while a round runs, every log whose write completes meanwhile joins the next round,
//! which starts as soon as the running one ends. So per shard and file system at most one
//! round runs and one gathers, and the number of syncs follows the device's speed, not the
//! partition count.
//!
//! A round of a few logs fdatasyncs each of their files at once (io_uring runs them side by
//! side; the journal commits them together). A round of [`SHARED_SYNC_FILES_MIN`] logs or more
//! is one `syncfs(2)` of their file system: one journal commit and one cache flush for all. A
//! round covers exactly the writes that completed before it started, because a log joins only
//! the round that has not started yet. `syncfs` also writes back whatever else is dirty on the
//! same file system, which is why small rounds keep their fdatasyncs, and why a broker's data
//! directory is best on a file system of its own.
//!
//! A log's first flush in a new leader epoch also writes its epoch checkpoint (unsynced, renamed
//! into place) and asks its round for metadata: that round is a `syncfs`, which makes the data,
//! the checkpoint and its name durable together, instead of two more journal commits per log
//! (a topic of 10,000 new partitions pays this for every one of them).
//!
//! Errors reach every log of the round: a failed sync fails each of their flushes (and each
//! log then stops taking writes, as after any failed flush).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use glommio::io::DmaFile;

use super::error::{Result, StorageError};
use crate::limits::SHARED_SYNC_FILES_MIN;
use crate::notify::Latch;

/// How many syncs of each kind this shard ran, and for how many log flushes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Rounds that fdatasynced their files.
    pub fdatasync_rounds: u64,
    /// Rounds that ran one `syncfs` for all their files.
    pub syncfs_rounds: u64,
    /// Log flushes made durable by the rounds.
    pub files: u64,
}

/// How a round ended: the error as (raw OS error, text), which every member rebuilds.
type Outcome = std::result::Result<(), (Option<i32>, String)>;

/// One round: the files to make durable, and its outcome once it ran.
struct Round {
    files: RefCell<Vec<Rc<DmaFile>>>,
    /// A member also needs file-system metadata durable (a file it renamed into place).
    metadata: Cell<bool>,
    done: Latch,
    /// `None` until done.
    outcome: RefCell<Option<Outcome>>,
}

/// The rounds of one file system on this shard.
struct FileSystem {
    /// A descriptor on the file system, for `syncfs` (shared with the blocking thread).
    handle: Arc<std::fs::File>,
    running: bool,
    next: Option<Rc<Round>>,
}

thread_local! {
    static FILE_SYSTEMS: RefCell<HashMap<u64, FileSystem>> = RefCell::new(HashMap::new());
    static STATS: Cell<SyncStats> = const { Cell::new(SyncStats { fdatasync_rounds: 0, syncfs_rounds: 0, files: 0 }) };
}

/// This shard's sync counts.
pub fn shard_sync_stats() -> SyncStats {
    STATS.with(Cell::get)
}

/// Makes the writes to `file` (at `path`) that completed before this call durable, in the
/// shard's next round for its file system. With `metadata`, also every change to the file
/// system made before this call (files written without a sync and renamed into place): the
/// round is then a `syncfs` whatever its size.
/// `device` is the file system's ([`device_of`]; a log's files all share one).
pub async fn sync(file: &Rc<DmaFile>, path: &Path, device: u64, metadata: bool) -> Result<()> {
    let (round, drive) = FILE_SYSTEMS.with(|systems| -> Result<(Rc<Round>, bool)> {
        let mut systems = systems.borrow_mut();
        let system = match systems.entry(device) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let dir = path.parent().unwrap_or(path);
                // A directory opens at once (no data is read); this happens once per file
                // system and shard.
                let handle = std::fs::File::open(dir).map_err(|source| StorageError::Io {
                    op: "open",
                    path: dir.to_path_buf(),
                    source,
                })?;
                entry.insert(FileSystem {
                    handle: Arc::new(handle),
                    running: false,
                    next: None,
                })
            }
        };
        let round = system.next.get_or_insert_with(|| {
            Rc::new(Round {
                files: RefCell::new(Vec::new()),
                metadata: Cell::new(false),
                done: Latch::new(),
                outcome: RefCell::new(None),
            })
        });
        round.files.borrow_mut().push(Rc::clone(file));
        if metadata {
            round.metadata.set(true);
        }
        let drive = !system.running;
        system.running = true;
        Ok((Rc::clone(round), drive))
    })?;
    if drive {
        glommio::spawn_local(run_rounds(device)).detach();
    }
    round.done.listen().await;
    let outcome = round.outcome.borrow().clone();
    match outcome {
        Some(Ok(())) => Ok(()),
        Some(Err((code, text))) => Err(StorageError::Io {
            op: "sync",
            path: path.to_path_buf(),
            source: match code {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::other(text),
            },
        }),
        None => unreachable!("a round is done only once its outcome is set"),
    }
}

/// Runs the file system's rounds one after another until none is waiting.
async fn run_rounds(device: u64) {
    loop {
        let next = FILE_SYSTEMS.with(|systems| {
            let mut systems = systems.borrow_mut();
            let system = systems.get_mut(&device)?;
            match system.next.take() {
                Some(round) => Some((round, Arc::clone(&system.handle))),
                None => {
                    system.running = false;
                    None
                }
            }
        });
        let Some((round, handle)) = next else { return };
        let files = std::mem::take(&mut *round.files.borrow_mut());
        let whole = round.metadata.get() || files.len() >= SHARED_SYNC_FILES_MIN;
        let outcome = run_round(&files, whole, handle).await;
        STATS.with(|s| {
            let mut stats = s.get();
            if whole {
                stats.syncfs_rounds += 1;
            } else {
                stats.fdatasync_rounds += 1;
            }
            stats.files += files.len() as u64;
            s.set(stats);
        });
        *round.outcome.borrow_mut() =
            Some(outcome.map_err(|e: std::io::Error| (e.raw_os_error(), e.to_string())));
        round.done.fire();
    }
}

/// Runs a round: one `syncfs` when `whole`, else an fdatasync per file.
async fn run_round(
    files: &[Rc<DmaFile>],
    whole: bool,
    handle: Arc<std::fs::File>,
) -> std::io::Result<()> {
    if whole {
        return glommio::executor()
            .spawn_blocking(move || {
                // SAFETY: `handle` is an open descriptor owned by this closure's Arc for the
                // whole call.
                let rc = unsafe { libc::syncfs(handle.as_raw_fd()) };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            })
            .await;
    }
    // The fdatasyncs run side by side: each in a task of its own, awaited in turn.
    let tasks: Vec<_> = files
        .iter()
        .map(|file| {
            let file = Rc::clone(file);
            glommio::spawn_local(async move { file.fdatasync().await })
        })
        .collect();
    let mut first_error = None;
    for task in tasks {
        if let Err(error) = task.await {
            first_error.get_or_insert(std::io::Error::from(error));
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The device id of the file system holding `file`.
pub fn device_of(file: &DmaFile, path: &Path) -> Result<u64> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `stat` into the buffer on success; the descriptor is open while
    // `file` is borrowed.
    let rc = unsafe { libc::fstat(file.as_raw_fd(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(StorageError::Io {
            op: "fstat",
            path: path.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: initialized by the successful fstat above.
    Ok(unsafe { stat.assume_init() }.st_dev)
}
