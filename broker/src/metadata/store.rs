//! Durable storage of the metadata Raft group: the log, the vote, and the state machine with its
//! snapshots.
//!
//! Files under `<data-dir>/metadata/`:
//! - `raft.log`: entries end to end, each `[u32 len][u32 crc32c][JSON entry]`, fsynced before an
//!   append is acknowledged to Raft. Recovery keeps the valid prefix (a torn tail was never
//!   acknowledged). Truncation and purging rewrite the file (tmp, fsync, rename, fsync dir), which
//!   keeps it bounded: purging follows every snapshot.
//! - `vote`, `purged`: JSON, replaced atomically the same way.
//! - `snapshot`: `[8 magic "SLMETA02"][u32 schema][u32 meta len][JSON meta][u64 state len]
//!   [rkyv ClusterState][u32 crc]`, CRC-32C over everything before it. The same bytes are what a
//!   leader ships to a follower that needs a snapshot. `schema` names the layout of the rkyv
//!   archive ([`CLUSTER_STATE_SCHEMA`]); a file from before the field existed (magic
//!   `SLMETA01`, no schema field) is schema 1. A broker refuses, with a clear error, a schema
//!   newer than it knows.
//!
//! This storage runs on the dedicated metadata thread, never on a data-path shard, so it uses
//! plain blocking file I/O: an fsync there delays only metadata work.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Cursor, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use tokio::sync::watch;

use super::types::{ClusterState, CommandResult, NodeId, TypeConfig};

const SNAPSHOT_MAGIC: &[u8; 8] = b"SLMETA02";
/// The first snapshot layout, which had no schema field: its archive is schema 1.
const SNAPSHOT_MAGIC_UNVERSIONED: &[u8; 8] = b"SLMETA01";
/// The layout of the archived [`ClusterState`] this broker writes. Bump it whenever a field of
/// `ClusterState` (or of a type inside it) is added, removed or changed, keep the previous
/// layout's types in a module of their own, and decode older schemas by converting from them in
/// `decode_state`: a rolling upgrade meets snapshots written by the previous version.
pub const CLUSTER_STATE_SCHEMA: u32 = 5;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock already aborts the process (panic = abort in release).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn encode_entry(entry: &Entry<TypeConfig>, out: &mut Vec<u8>) -> std::io::Result<()> {
    let payload = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// Decodes the valid prefix of a log file; returns the entries and the length of that prefix.
fn decode_log(bytes: &[u8]) -> (Vec<Entry<TypeConfig>>, usize) {
    let mut entries = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Ok(entry) = serde_json::from_slice::<Entry<TypeConfig>>(payload) else {
            break;
        };
        entries.push(entry);
        at += 8 + len;
    }
    (entries, at)
}

#[derive(Debug)]
struct LogInner {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

impl LogInner {
    fn log_path(dir: &Path) -> PathBuf {
        dir.join("raft.log")
    }

    /// Rewrites the log file from the in-memory entries.
    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        for entry in self.entries.values() {
            encode_entry(entry, &mut bytes)?;
        }
        let path = Self::log_path(&self.dir);
        write_atomic(&path, &bytes)?;
        self.file = OpenOptions::new().append(true).open(&path)?;
        Ok(())
    }
}

/// The Raft log and vote. Cloning shares the same store (the log reader is a clone).
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let path = LogInner::log_path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (entries, valid) = decode_log(&bytes);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if valid < bytes.len() {
            tracing::warn!(path = %path.display(), cut = bytes.len() - valid, "cutting a torn metadata log tail");
            file.set_len(valid as u64)?;
            file.sync_all()?;
        }
        let last_purged: Option<LogId<NodeId>> = read_json(&dir.join("purged"))?;
        let entries = entries
            .into_iter()
            .filter(|e| last_purged.is_none_or(|p| e.log_id.index > p.index))
            .map(|e| (e.log_id.index, e))
            .collect();
        Ok(LogStore {
            inner: Arc::new(Mutex::new(LogInner {
                dir: dir.to_owned(),
                file,
                entries,
                last_purged,
                vote: read_json(&dir.join("vote"))?,
                committed: read_json(&dir.join("committed"))?,
            })),
        })
    }

    /// Entries currently held (for tests of log compaction).
    pub fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let inner = lock(&self.inner);
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let inner = lock(&self.inner);
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let mut inner = lock(&self.inner);
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        write_atomic(&inner.dir.join("vote"), &bytes)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(lock(&self.inner).vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let mut inner = lock(&self.inner);
        let bytes = serde_json::to_vec(&committed).map_err(|e| StorageIOError::write(&e))?;
        write_atomic(&inner.dir.join("committed"), &bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(lock(&self.inner).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = lock(&self.inner);
        let mut bytes = Vec::new();
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        for entry in &entries {
            encode_entry(entry, &mut bytes).map_err(|e| StorageIOError::write_logs(&e))?;
        }
        let outcome = inner
            .file
            .write_all(&bytes)
            .and_then(|()| inner.file.sync_data());
        if let Err(error) = outcome {
            let message = error.to_string();
            callback.log_io_completed(Err(error));
            return Err(StorageIOError::write_logs(&std::io::Error::other(message)).into());
        }
        for entry in entries {
            inner.entries.insert(entry.log_id.index, entry);
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut inner = lock(&self.inner);
        inner.entries.split_off(&log_id.index);
        inner
            .rewrite()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut inner = lock(&self.inner);
        let bytes = serde_json::to_vec(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        write_atomic(&inner.dir.join("purged"), &bytes)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        inner.last_purged = Some(log_id);
        let kept = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = kept;
        inner
            .rewrite()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
}

/// Encodes a snapshot file: the metadata as JSON and the state as an rkyv archive, with a CRC.
fn encode_snapshot(
    meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
    state: &ClusterState,
) -> std::io::Result<Vec<u8>> {
    let meta_json = serde_json::to_vec(&StoredSnapshotMeta { meta: meta.clone() })
        .map_err(std::io::Error::other)?;
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(state).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(meta_json.len() + archive.len() + 32);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&CLUSTER_STATE_SCHEMA.to_le_bytes());
    out.extend_from_slice(&(meta_json.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta_json);
    out.extend_from_slice(&(archive.len() as u64).to_le_bytes());
    out.extend_from_slice(&archive);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("metadata snapshot: {why}"),
    )
}

/// Decodes and validates a snapshot file (magic and schema, CRC, then rkyv's bytecheck
/// validation).
fn decode_snapshot(
    bytes: &[u8],
) -> std::io::Result<(SnapshotMeta<NodeId, openraft::BasicNode>, ClusterState)> {
    if bytes.len() < 8 + 4 + 8 + 4 {
        return Err(invalid("too short"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let u32_at =
        |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
    let (schema, meta_at) = match &body[..8] {
        magic if magic == SNAPSHOT_MAGIC && body.len() >= 16 => (u32_at(8), 12),
        magic if magic == SNAPSHOT_MAGIC_UNVERSIONED => (1, 8),
        _ => return Err(invalid("bad magic")),
    };
    if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(invalid("CRC mismatch"));
    }
    if schema > CLUSTER_STATE_SCHEMA {
        return Err(invalid(&format!(
            "written with state schema {schema}, newer than this broker's \
             {CLUSTER_STATE_SCHEMA}: upgrade this broker before it joins"
        )));
    }
    let meta_len = u32_at(meta_at) as usize;
    let meta_start = meta_at + 4;
    let meta_end = meta_start
        .checked_add(meta_len)
        .filter(|&e| e + 8 <= body.len())
        .ok_or_else(|| invalid("bad meta length"))?;
    let meta: StoredSnapshotMeta =
        serde_json::from_slice(&body[meta_start..meta_end]).map_err(|e| invalid(&e.to_string()))?;
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&body[meta_end..meta_end + 8]);
    let state_len = u64::from_le_bytes(len_bytes) as usize;
    let state_bytes = body
        .get(meta_end + 8..meta_end + 8 + state_len)
        .ok_or_else(|| invalid("bad state length"))?;
    // rkyv needs an aligned buffer.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(state_bytes.len());
    aligned.extend_from_slice(state_bytes);
    Ok((meta.meta, decode_state(schema, &aligned)?))
}

/// Decodes an archived `ClusterState` of the given schema (not newer than this broker's).
fn decode_state(schema: u32, archive: &[u8]) -> std::io::Result<ClusterState> {
    match schema {
        1 => rkyv::from_bytes::<super::legacy::v1::ClusterState, rkyv::rancor::Error>(archive)
            .map(ClusterState::from)
            .map_err(|e| invalid(&e.to_string())),
        2 => rkyv::from_bytes::<super::legacy::v2::ClusterState, rkyv::rancor::Error>(archive)
            .map(ClusterState::from)
            .map_err(|e| invalid(&e.to_string())),
        3 => rkyv::from_bytes::<super::legacy::v3::ClusterState, rkyv::rancor::Error>(archive)
            .map(ClusterState::from)
            .map_err(|e| invalid(&e.to_string())),
        4 => rkyv::from_bytes::<super::legacy::v4::ClusterState, rkyv::rancor::Error>(archive)
            .map(ClusterState::from)
            .map_err(|e| invalid(&e.to_string())),
        5 => rkyv::from_bytes::<ClusterState, rkyv::rancor::Error>(archive)
            .map_err(|e| invalid(&e.to_string())),
        other => Err(invalid(&format!("state schema {other} is unknown"))),
    }
}

#[derive(Debug)]
struct MachineInner {
    dir: PathBuf,
    state: Arc<ClusterState>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    snapshot: Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
    published: watch::Sender<Arc<ClusterState>>,
}

/// The state machine. Every applied change is published on a watch channel, which is how the
/// rest of the broker sees versioned metadata.
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    inner: Arc<Mutex<MachineInner>>,
}

impl StateMachineStore {
    /// Opens the state machine from its last snapshot, if any.
    pub fn open(
        dir: &Path,
    ) -> std::io::Result<(StateMachineStore, watch::Receiver<Arc<ClusterState>>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("snapshot");
        let (state, last_applied, membership, snapshot) = match std::fs::read(&path) {
            Ok(bytes) => {
                let (meta, state) = decode_snapshot(&bytes)?;
                (
                    state,
                    meta.last_log_id,
                    meta.last_membership.clone(),
                    Some((meta, bytes)),
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
                ClusterState::default(),
                None,
                StoredMembership::default(),
                None,
            ),
            Err(e) => return Err(e),
        };
        let state = Arc::new(state);
        let (published, receiver) = watch::channel(Arc::clone(&state));
        Ok((
            StateMachineStore {
                inner: Arc::new(Mutex::new(MachineInner {
                    dir: dir.to_owned(),
                    state,
                    last_applied,
                    membership,
                    snapshot,
                    snapshots_built: 0,
                    published,
                })),
            },
            receiver,
        ))
    }

    /// The current applied state.
    pub fn state(&self) -> Arc<ClusterState> {
        Arc::clone(&lock(&self.inner).state)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let mut inner = lock(&self.inner);
        inner.snapshots_built += 1;
        let last = inner.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: inner.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{}",
                last.map_or(0, |l| l.leader_id.term),
                last.map_or(0, |l| l.index),
                inner.snapshots_built
            ),
        };
        let bytes = encode_snapshot(&meta, &inner.state)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        write_atomic(&inner.dir.join("snapshot"), &bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        inner.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, openraft::BasicNode>,
    )> {
        let inner = lock(&self.inner);
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = lock(&self.inner);
        let mut results = Vec::new();
        let mut state = (*inner.state).clone();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => CommandResult::Applied {
                    version: state.version,
                },
                EntryPayload::Normal(command) => state.apply(&command),
                EntryPayload::Membership(membership) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandResult::Applied {
                        version: state.version,
                    }
                }
            };
            results.push(result);
        }
        if state != *inner.state {
            let state = Arc::new(state);
            inner.state = Arc::clone(&state);
            inner.published.send_replace(state);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let (_, state) = decode_snapshot(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let mut inner = lock(&self.inner);
        write_atomic(&inner.dir.join("snapshot"), &bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(last = ?meta.last_log_id, version = state.version, "installed a metadata snapshot");
        let state = Arc::new(state);
        inner.state = Arc::clone(&state);
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some((meta.clone(), bytes));
        inner.published.send_replace(state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let inner = lock(&self.inner);
        Ok(inner.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (SnapshotMeta<NodeId, openraft::BasicNode>, ClusterState) {
        let state = ClusterState {
            version: 42,
            next_topic_id: 7,
            next_producer_id: 1 << 20,
            ..ClusterState::default()
        };
        let meta = SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: "test".into(),
        };
        (meta, state)
    }

    #[test]
    fn snapshots_round_trip_with_their_schema() {
        let (meta, state) = sample();
        let bytes = encode_snapshot(&meta, &state).unwrap();
        assert_eq!(&bytes[..8], SNAPSHOT_MAGIC);
        assert_eq!(&bytes[8..12], &CLUSTER_STATE_SCHEMA.to_le_bytes());
        let (back_meta, back) = decode_snapshot(&bytes).unwrap();
        assert_eq!(back, state);
        assert_eq!(back_meta.snapshot_id, "test");
        for at in [0, 9, 20, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1;
            assert!(decode_snapshot(&damaged).is_err(), "byte {at}");
        }
    }

    /// A snapshot written before the schema field existed (schema 1, the layout before
    /// partition epochs) still opens, converted to the current state.
    #[test]
    fn unversioned_schema_one_snapshots_are_converted() {
        use super::super::legacy::v1;
        use crate::metadata::types::{FlushSetting, ReplicaPlacement};
        let old = v1::ClusterState {
            version: 9,
            topics: [(
                "t".to_string(),
                v1::Topic {
                    name: "t".into(),
                    id: 3,
                    replication_factor: 3,
                    config: v1::TopicConfig {
                        segment_bytes: 1 << 30,
                        segment_age_ms: None,
                        retention_ms: Some(1000),
                        retention_bytes: None,
                        flush: FlushSetting::Always,
                        message_bytes_max: 1 << 20,
                    },
                    partitions: vec![v1::PartitionInfo {
                        replicas: vec![ReplicaPlacement {
                            broker: 1,
                            shard: 0,
                        }],
                        leader: Some(1),
                        leader_epoch: 4,
                        in_sync: vec![1],
                    }],
                },
            )]
            .into(),
            ..v1::ClusterState::default()
        };
        let (meta, _) = sample();
        let meta_json = serde_json::to_vec(&StoredSnapshotMeta { meta }).unwrap();
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
        let mut legacy = SNAPSHOT_MAGIC_UNVERSIONED.to_vec();
        legacy.extend_from_slice(&(meta_json.len() as u32).to_le_bytes());
        legacy.extend_from_slice(&meta_json);
        legacy.extend_from_slice(&(archive.len() as u64).to_le_bytes());
        legacy.extend_from_slice(&archive);
        let crc = crc32c::crc32c(&legacy);
        legacy.extend_from_slice(&crc.to_le_bytes());
        let state = decode_snapshot(&legacy).unwrap().1;
        let topic = &state.topics["t"];
        assert_eq!(state.version, 9);
        assert_eq!(topic.config.retention_ms, Some(1000));
        assert_eq!(topic.config.min_insync_replicas, 2, "resolved for rf 3");
        assert_eq!(topic.partitions[0].leader_epoch, 4);
        assert_eq!(topic.partitions[0].partition_epoch, 0);
    }

    /// A snapshot file of an older `schema` holding `archive`.
    fn legacy_snapshot(schema: u32, archive: &[u8]) -> Vec<u8> {
        let (meta, _) = sample();
        let meta_json = serde_json::to_vec(&StoredSnapshotMeta { meta }).unwrap();
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bytes.extend_from_slice(&schema.to_le_bytes());
        bytes.extend_from_slice(&(meta_json.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&meta_json);
        bytes.extend_from_slice(&(archive.len() as u64).to_le_bytes());
        bytes.extend_from_slice(archive);
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn v3_config() -> super::super::legacy::v3::TopicConfig {
        use crate::metadata::types::TopicConfig;
        let c = TopicConfig::default();
        super::super::legacy::v3::TopicConfig {
            segment_bytes: c.segment_bytes,
            segment_age_ms: c.segment_age_ms,
            retention_ms: Some(1234),
            retention_bytes: c.retention_bytes,
            flush: c.flush,
            message_bytes_max: c.message_bytes_max,
            min_insync_replicas: 2,
            replica_lag_time_max_ms: c.replica_lag_time_max_ms,
            unclean_leader_election: true,
        }
    }

    /// A schema-2 snapshot (before reassignments) opens with no reassignment in progress.
    #[test]
    fn schema_two_snapshots_are_converted() {
        use super::super::legacy::v2;
        use crate::metadata::types::ReplicaPlacement;
        let old = v2::ClusterState {
            version: 12,
            topics: [(
                "t".to_string(),
                v2::Topic {
                    name: "t".into(),
                    id: 5,
                    replication_factor: 1,
                    config: v3_config(),
                    partitions: vec![v2::PartitionInfo {
                        replicas: vec![ReplicaPlacement {
                            broker: 2,
                            shard: 1,
                        }],
                        leader: Some(2),
                        leader_epoch: 3,
                        in_sync: vec![2],
                        partition_epoch: 7,
                    }],
                },
            )]
            .into(),
            ..v2::ClusterState::default()
        };
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
        let state = decode_snapshot(&legacy_snapshot(2, &archive)).unwrap().1;
        let p = &state.topics["t"].partitions[0];
        assert_eq!(state.version, 12);
        assert_eq!(
            (p.leader, p.leader_epoch, p.partition_epoch),
            (Some(2), 3, 7)
        );
        assert_eq!(p.target_replicas, None);
        assert_eq!(state.topics["t"].config.retention_ms, Some(1234));
    }

    /// A schema-3 snapshot (before `cleanup.policy`) opens with every topic deleting old data.
    #[test]
    fn schema_three_snapshots_are_converted() {
        use super::super::legacy::v3;
        let old = v3::ClusterState {
            version: 13,
            topics: [(
                "t".to_string(),
                v3::Topic {
                    name: "t".into(),
                    id: 6,
                    replication_factor: 1,
                    config: v3_config(),
                    partitions: Vec::new(),
                },
            )]
            .into(),
            ..v3::ClusterState::default()
        };
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
        let state = decode_snapshot(&legacy_snapshot(3, &archive)).unwrap().1;
        let config = &state.topics["t"].config;
        assert_eq!(state.version, 13);
        assert_eq!(config.cleanup_policy, crate::storage::CleanupPolicy::Delete);
        assert_eq!(
            (
                config.retention_ms,
                config.min_insync_replicas,
                config.unclean_leader_election
            ),
            (Some(1234), 2, true)
        );
    }

    /// A schema-4 snapshot (before Kafka addresses) opens with brokers that have none.
    #[test]
    fn schema_four_snapshots_are_converted() {
        use super::super::legacy::v4;
        use crate::metadata::types::BrokerState;
        let old = v4::ClusterState {
            version: 9,
            brokers: [(
                4,
                v4::Broker {
                    id: 4,
                    address: "127.0.0.1:9490".into(),
                    metadata_address: "127.0.0.1:9492".into(),
                    shards: 2,
                    shard_addresses: vec!["127.0.0.1:9500".into(), "127.0.0.1:9501".into()],
                    state: BrokerState::Alive,
                },
            )]
            .into(),
            ..v4::ClusterState::default()
        };
        let (meta, _) = sample();
        let meta_json = serde_json::to_vec(&StoredSnapshotMeta { meta }).unwrap();
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bytes.extend_from_slice(&4u32.to_le_bytes());
        bytes.extend_from_slice(&(meta_json.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&meta_json);
        bytes.extend_from_slice(&(archive.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&archive);
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let state = decode_snapshot(&bytes).unwrap().1;
        let broker = &state.brokers[&4];
        assert_eq!(state.version, 9);
        assert_eq!(broker.shard_addresses.len(), 2);
        assert!(broker.kafka_addresses.is_empty());
    }

    #[test]
    fn a_newer_schema_is_refused_with_a_clear_error() {
        let (meta, state) = sample();
        let mut bytes = encode_snapshot(&meta, &state).unwrap();
        bytes[8..12].copy_from_slice(&(CLUSTER_STATE_SCHEMA + 1).to_le_bytes());
        let len = bytes.len();
        let crc = crc32c::crc32c(&bytes[..len - 4]);
        bytes[len - 4..].copy_from_slice(&crc.to_le_bytes());
        let error = decode_snapshot(&bytes).unwrap_err().to_string();
        assert!(error.contains("newer than this broker"), "{error}");
    }
}
