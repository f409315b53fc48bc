//! The shard's descriptor cache for sealed segments.
//!
//! A sealed segment's log file is opened when a read needs it and kept in a per-shard (per
//! thread) LRU of at most `limits::SEALED_FILES_OPEN_MAX` descriptors; the least recently used
//! is closed beyond it. Files are keyed by the log that owns them (an id per opened
//! `PartitionLog`) and the segment's base offset, so a reopened log or a compacted segment
//! never finds a descriptor of a file that was replaced. A reader holding an `Rc<DmaFile>`
//! keeps its descriptor open after eviction until it is done: what is open is bounded by the
//! cache plus the reads in flight, not by partitions × segments.
//!
//! Descriptors opened for a moment are bounded per shard too: small files (checkpoints, index
//! files, directories to sync) through [`small_file_permit`], and the previous segment of a
//! roll, open until its background seal ends, through [`seal_permit`]. So 10,000 partitions
//! that flush or roll at once need 10,000 descriptors for their active segments plus a fixed
//! number per shard.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;

use glommio::io::DmaFile;
use glommio::sync::{Semaphore, StaticPermit};

use super::error::{io_error, Result, StorageError};
use crate::limits::{SEALS_CONCURRENT, SMALL_FILE_OPS_CONCURRENT};

type Key = (u64, u64);

#[derive(Debug)]
struct FileCache {
    files: HashMap<Key, (Rc<DmaFile>, u64)>,
    /// Last use → key, oldest first.
    uses: BTreeMap<u64, Key>,
    tick: u64,
    files_max: usize,
    opens: u64,
}

thread_local! {
    static FILES: RefCell<FileCache> = RefCell::new(FileCache {
        files: HashMap::new(),
        uses: BTreeMap::new(),
        tick: 0,
        files_max: crate::limits::SEALED_FILES_OPEN_MAX,
        opens: 0,
    });
}

impl FileCache {
    fn touch(&mut self, key: Key) -> Option<Rc<DmaFile>> {
        self.tick += 1;
        let tick = self.tick;
        let (file, used) = self.files.get_mut(&key)?;
        self.uses.remove(used);
        *used = tick;
        self.uses.insert(tick, key);
        Some(Rc::clone(file))
    }

    fn insert(&mut self, key: Key, file: Rc<DmaFile>) {
        self.remove(key);
        self.tick += 1;
        self.uses.insert(self.tick, key);
        self.files.insert(key, (file, self.tick));
        while self.files.len() > self.files_max {
            let Some((_, oldest)) = self.uses.pop_first() else {
                break;
            };
            self.files.remove(&oldest);
        }
    }

    fn remove(&mut self, key: Key) {
        if let Some((_, used)) = self.files.remove(&key) {
            self.uses.remove(&used);
        }
    }
}

/// A sealed segment's file, from the cache or opened (read-only, direct I/O) and cached.
pub async fn open_sealed(log: u64, base_offset: u64, path: &Path) -> Result<Rc<DmaFile>> {
    if let Some(file) = FILES.with(|f| f.borrow_mut().touch((log, base_offset))) {
        return Ok(file);
    }
    let file = Rc::new(DmaFile::open(path).await.map_err(io_error("open", path))?);
    FILES.with(|f| {
        let mut cache = f.borrow_mut();
        cache.opens += 1;
        // Another read may have opened it meanwhile: either descriptor serves.
        cache.insert((log, base_offset), Rc::clone(&file));
    });
    Ok(file)
}

/// Caches a descriptor already open (a segment just sealed or written by compaction).
pub fn insert(log: u64, base_offset: u64, file: Rc<DmaFile>) {
    FILES.with(|f| f.borrow_mut().insert((log, base_offset), file));
}

/// Forgets a segment's descriptor (its file is deleted or replaced).
pub fn forget(log: u64, base_offset: u64) {
    let _ = FILES.try_with(|f| f.borrow_mut().remove((log, base_offset)));
}

/// Forgets every descriptor of a log (it closed).
pub fn forget_log(log: u64) {
    let _ = FILES.try_with(|f| {
        let mut cache = f.borrow_mut();
        let keys: Vec<Key> = cache.files.keys().filter(|k| k.0 == log).copied().collect();
        for key in keys {
            cache.remove(key);
        }
    });
}

/// Descriptors cached on this shard, and how many sealed files it opened in all.
pub fn stats() -> (usize, u64) {
    FILES.with(|f| {
        let cache = f.borrow();
        (cache.files.len(), cache.opens)
    })
}

/// Changes this shard's bound (tests), closing the least recently used beyond it.
pub fn set_files_max(files_max: usize) {
    FILES.with(|f| {
        let mut cache = f.borrow_mut();
        cache.files_max = files_max.max(1);
        while cache.files.len() > cache.files_max {
            let Some((_, oldest)) = cache.uses.pop_first() else {
                break;
            };
            cache.files.remove(&oldest);
        }
    });
}

thread_local! {
    static SMALL_FILE_OPS: Rc<Semaphore> = Rc::new(Semaphore::new(SMALL_FILE_OPS_CONCURRENT as u64));
    static SEALS: Rc<Semaphore> = Rc::new(Semaphore::new(SEALS_CONCURRENT as u64));
}

/// A permit to open a small file (a checkpoint, an index file, a directory to sync) on this
/// shard: at most `limits::SMALL_FILE_OPS_CONCURRENT` such descriptors are open at once, however
/// many logs flush a new epoch's checkpoint together.
pub async fn small_file_permit() -> Result<StaticPermit> {
    let permits = SMALL_FILE_OPS.with(Rc::clone);
    permits
        .acquire_static_permit(1)
        .await
        .map_err(|_| StorageError::Closed)
}

/// A permit to roll a segment on this shard, held until its background seal ends (the sealed
/// file's descriptor stays open meanwhile): at most `limits::SEALS_CONCURRENT` at once.
pub async fn seal_permit() -> Result<StaticPermit> {
    let permits = SEALS.with(Rc::clone);
    permits
        .acquire_static_permit(1)
        .await
        .map_err(|_| StorageError::Closed)
}

/// A new id for an opened log.
pub fn next_log_id() -> u64 {
    thread_local! {
        static NEXT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    NEXT.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    })
}
