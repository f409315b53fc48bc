//! A shard's partitions: which logs it owns, opened and closed as the metadata changes.
//!
//! Partition directories live under `<data-dir>/topics/` and are named
//! `{topic}-{partition}@{topic_id}`, so a topic deleted and created again never reuses old data.

use std::cell::RefCell;

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::producers::{PartitionProducers, ProducerState};
use super::{Mode, ShardConfig};
use crate::limits::{LOG_CLOSES_CONCURRENT, LOG_OPENS_CONCURRENT};
use crate::metadata::types::{FlushSetting, PartitionInfo, TopicConfig};
use crate::metadata::{ClusterState, NodeId};
use crate::metrics::{PartitionCounters, ShardMetrics};
use crate::replication::isr::LeaderState;
use crate::storage::{FlushPolicy, LogConfig, PartitionLog, StorageError};

/// One partition this shard holds a replica of.
#[derive(Debug, Clone)]
pub struct OwnedPartition {
    pub topic_id: u64,
    pub log: PartitionLog,
    /// Whether this broker leads the partition (only the leader serves produce and fetch).
    pub leader: bool,
    pub leader_epoch: u32,
    /// Idempotent producers' sequences, rebuilt from the log on open and when this replica
    /// becomes leader; every append of an idempotent batch goes through it.
    pub producers: Rc<PartitionProducers>,
    /// The partition as the metadata last described it (replicas, in-sync set, epochs).
    pub info: Rc<PartitionInfo>,
    /// `acks=all` needs at least this many in-sync replicas.
    pub min_insync: u32,
    pub replica_lag_time_max_ms: u64,
    /// The leader's view of its followers, while this broker leads.
    pub followers: Option<Rc<RefCell<LeaderState>>>,
    /// Records and bytes in and out of this replica, since this shard opened its log.
    pub counters: Rc<PartitionCounters>,
}

/// Milliseconds on a clock that only moves forward (the in-sync rules' time).
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl OwnedPartition {
    /// The brokers of the in-sync set.
    pub fn in_sync(&self) -> &[NodeId] {
        &self.info.in_sync
    }

    /// Recomputes the high watermark a leader publishes: its durable end while it is alone in
    /// the in-sync set, else the smallest durable end over the set.
    pub fn refresh_high_watermark(&self, me: NodeId) {
        let Some(followers) = &self.followers else {
            return;
        };
        // The in-sync rules' own high watermark moves too while the leader is alone: a follower
        // joins only once durable up to it, so it must not lag behind what consumers were shown.
        let hw = followers
            .borrow_mut()
            .update_high_watermark(self.log.durable_end());
        if self.info.in_sync.as_slice() == [me] {
            self.log.follow_durable_end();
        } else {
            self.log.set_high_watermark(hw);
        }
    }
}

/// A partition's topic and index, so that a map keyed by `(String, u32)` is searched with a
/// borrowed `(&str, u32)`: every produced batch and every replica fetch answer looks its
/// partition up, and allocating the topic's name for each was a visible part of a
/// many-partition shard's time.
trait PartitionKey {
    fn key(&self) -> (&str, u32);
}

impl PartitionKey for (String, u32) {
    fn key(&self) -> (&str, u32) {
        (&self.0, self.1)
    }
}

impl PartitionKey for (&str, u32) {
    fn key(&self) -> (&str, u32) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn PartitionKey + 'a> for (String, u32) {
    fn borrow(&self) -> &(dyn PartitionKey + 'a) {
        self
    }
}

// Hashes and compares as `(String, u32)` does (a `String` hashes as its `str`).
impl std::hash::Hash for dyn PartitionKey + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialEq for dyn PartitionKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn PartitionKey + '_ {}

/// A leader as a follower addresses it: its broker and the shard that holds the partition.
pub type LeaderShard = (NodeId, u32);

/// The partitions a shard follows from one leader shard, in a fixed order, with an index by
/// topic and partition (a fetch answer is matched to its partition without a scan).
#[derive(Debug, Default)]
pub struct Followed {
    pub partitions: Vec<(String, u32, OwnedPartition)>,
    /// Topic and partition to the position in `partitions` (looked up by `&str`).
    index: HashMap<(String, u32), usize>,
}

impl Followed {
    pub fn get(&self, topic: &str, partition: u32) -> Option<&OwnedPartition> {
        let at = *self.index.get(&(topic, partition) as &dyn PartitionKey)?;
        Some(&self.partitions[at].2)
    }
}

/// Views of a shard's partitions that periodic tasks read (the in-sync check every 100 ms, each
/// replica fetch round), built on first use after the partitions change instead of from every
/// partition on every use: an idle broker's CPU no longer grows with its partition count.
#[derive(Debug, Default)]
struct Views {
    /// Partitions led here with more than one replica (the only ones whose in-sync set can change).
    replicated_leaders: Option<Rc<[OwnedPartitionEntry]>>,
    /// Partitions followed here, by the leader shard they come from.
    followed: Option<Rc<HashMap<LeaderShard, Rc<Followed>>>>,
}

/// A partition with its topic and index.
pub type OwnedPartitionEntry = ((String, u32), OwnedPartition);

#[derive(Debug)]
pub struct Partitions {
    config: ShardConfig,
    shard: u32,
    owned: RefCell<HashMap<(String, u32), OwnedPartition>>,
    /// Rebuilt on first use after `owned` changes (every change of it clears them).
    views: RefCell<Views>,
    /// Closing logs leave their flush counts here.
    metrics: Rc<ShardMetrics>,
}

/// The log configuration of a topic's partition on this broker.
pub fn log_config(topic: &TopicConfig, mode: Mode) -> LogConfig {
    let flush = match (mode, topic.flush) {
        (_, FlushSetting::Never) => FlushPolicy::Never,
        (Mode::Latency, _) | (_, FlushSetting::Always) => FlushPolicy::Always,
        (Mode::Throughput, FlushSetting::Interval { interval_ms, bytes }) => {
            FlushPolicy::Interval {
                interval: Duration::from_millis(interval_ms.max(1)),
                bytes: bytes.max(1),
            }
        }
    };
    let batch_bytes_max = topic.message_bytes_max as usize;
    LogConfig {
        segment_bytes_max: topic.segment_bytes,
        segment_age_max: topic.segment_age_ms.map(Duration::from_millis),
        retention_ms: topic.retention_ms.map(Duration::from_millis),
        retention_bytes: topic.retention_bytes,
        cleanup_policy: topic.cleanup_policy,
        flush,
        batch_bytes_max,
        write_buffer_bytes: match mode {
            Mode::Throughput => (8 << 20).max(2 * batch_bytes_max + 4096),
            Mode::Latency => (2 << 20).max(2 * batch_bytes_max + 4096),
        },
        ..LogConfig::default()
    }
}

impl Partitions {
    pub fn new(config: ShardConfig, shard: u32, metrics: Rc<ShardMetrics>) -> Partitions {
        Partitions {
            config,
            shard,
            owned: RefCell::new(HashMap::new()),
            views: RefCell::new(Views::default()),
            metrics,
        }
    }

    pub fn get(&self, topic: &str, partition: u32) -> Option<OwnedPartition> {
        self.owned
            .borrow()
            .get(&(topic, partition) as &dyn PartitionKey)
            .cloned()
    }

    /// Every partition this shard holds a replica of.
    pub fn all(&self) -> Vec<((String, u32), OwnedPartition)> {
        self.owned
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The partitions led here that have more than one replica, as of the last change.
    pub fn replicated_leaders(&self) -> Rc<[OwnedPartitionEntry]> {
        if let Some(view) = &self.views.borrow().replicated_leaders {
            return Rc::clone(view);
        }
        let view: Rc<[OwnedPartitionEntry]> = self
            .owned
            .borrow()
            .iter()
            .filter(|(_, o)| o.leader && o.followers.is_some() && o.info.replicas.len() > 1)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.views.borrow_mut().replicated_leaders = Some(Rc::clone(&view));
        view
    }

    /// The partitions followed here (replicas of partitions led by another broker), by the
    /// leader shard they come from, as of the last change.
    pub fn followed(&self) -> Rc<HashMap<LeaderShard, Rc<Followed>>> {
        if let Some(view) = &self.views.borrow().followed {
            return Rc::clone(view);
        }
        let me = self.config.node_id;
        let mut by_leader: HashMap<LeaderShard, Followed> = HashMap::new();
        for ((topic, partition), owned) in self.owned.borrow().iter() {
            if owned.leader {
                continue;
            }
            let Some(leader) = owned.info.leader.filter(|l| *l != me) else {
                continue;
            };
            let Some(shard) = owned
                .info
                .replicas
                .iter()
                .find(|r| r.broker == leader)
                .map(|r| r.shard)
            else {
                continue;
            };
            let followed = by_leader.entry((leader, shard)).or_default();
            let at = followed.partitions.len();
            followed.index.insert((topic.clone(), *partition), at);
            followed
                .partitions
                .push((topic.clone(), *partition, owned.clone()));
        }
        let view: Rc<HashMap<LeaderShard, Rc<Followed>>> = Rc::new(
            by_leader
                .into_iter()
                .map(|(leader, followed)| (leader, Rc::new(followed)))
                .collect(),
        );
        self.views.borrow_mut().followed = Some(Rc::clone(&view));
        view
    }

    /// Records that `owned` changed: the views are built again on their next use.
    fn changed(&self) {
        *self.views.borrow_mut() = Views::default();
    }

    fn dir(&self, topic: &str, partition: u32, topic_id: u64) -> PathBuf {
        self.config
            .data_dir
            .join("topics")
            .join(format!("{topic}-{partition}@{topic_id}"))
    }

    /// Opens logs for partitions newly placed on this shard, updates leadership, and closes and
    /// deletes the logs of deleted topics. An error opening a log is an environment failure.
    pub async fn reconcile(&self, state: &Arc<ClusterState>) -> Result<(), StorageError> {
        let me: NodeId = self.config.node_id;
        let mut wanted: HashMap<(String, u32), (u64, &PartitionInfo, &TopicConfig)> =
            HashMap::new();
        for topic in state.topics.values() {
            for (index, partition) in topic.partitions.iter().enumerate() {
                if partition
                    .replicas
                    .iter()
                    .any(|r| r.broker == me && r.shard == self.shard)
                {
                    wanted.insert(
                        (topic.name.clone(), index as u32),
                        (topic.id, partition, &topic.config),
                    );
                }
            }
        }
        // Close logs whose partition is gone (topic deleted) or was recreated with another id.
        let stale: Vec<((String, u32), OwnedPartition)> = self
            .owned
            .borrow()
            .iter()
            .filter(|(key, owned)| wanted.get(*key).is_none_or(|w| w.0 != owned.topic_id))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, owned) in stale {
            self.owned.borrow_mut().remove(&key);
            self.changed();
            owned.log.close().await?;
            self.metrics.retire(&owned.log);
            let dir = owned.log.dir().to_owned();
            let removed = glommio::executor()
                .spawn_blocking(move || std::fs::remove_dir_all(&dir))
                .await;
            if let Err(error) = removed {
                tracing::warn!(%error, topic = %key.0, partition = key.1, "could not remove a deleted partition");
            }
        }
        // New partitions' logs are opened (recovered) concurrently, a bounded number at once:
        // a start-up or a topic of thousands of partitions overlaps their small reads and syncs.
        let mut opened = self.open_logs(&wanted).await?;
        for ((topic, partition), (topic_id, info, config)) in wanted {
            let key = (topic.clone(), partition);
            let leader = info.leader == Some(me);
            let epoch = info.leader_epoch;
            let existing = self.owned.borrow().get(&key).cloned();
            let fresh = existing.is_none();
            let mut owned = match existing {
                Some(owned) => owned,
                None => {
                    let Some((log, producers)) = opened.remove(&key) else {
                        return Err(StorageError::Failed(format!(
                            "partition {topic}-{partition} was not opened"
                        )));
                    };
                    OwnedPartition {
                        topic_id,
                        log,
                        leader: false,
                        leader_epoch: epoch,
                        producers: Rc::new(PartitionProducers::new(producers)),
                        info: Rc::new(info.clone()),
                        min_insync: config.resolved_min_insync(info.replicas.len() as u32),
                        replica_lag_time_max_ms: config.replica_lag_time_max_ms,
                        followers: None,
                        counters: Rc::default(),
                    }
                }
            };
            let became_leader = leader && (!owned.leader || owned.leader_epoch != epoch);
            let now_follower = !leader && (fresh || owned.leader || owned.leader_epoch != epoch);
            if now_follower {
                tracing::info!(%topic, partition, epoch, leader = ?info.leader, "following");
            }
            if !fresh && owned.info.in_sync != info.in_sync {
                tracing::info!(
                    %topic,
                    partition,
                    epoch,
                    from = ?owned.info.in_sync,
                    to = ?info.in_sync,
                    "in-sync set changed"
                );
            }
            // Leading starts between two steps of the partition: a replica append from the old
            // leader still landing finishes first (its sequence recorded, as every follower
            // append is), and none lands after (the fetcher finds the partition led).
            let producers = Rc::clone(&owned.producers);
            let _step = match became_leader {
                true => Some(producers.step().await?),
                false => None,
            };
            if became_leader {
                tracing::info!(%topic, partition, epoch, "leading");
                owned.followers = Some(Rc::new(RefCell::new(LeaderState::new(
                    me,
                    info.replicas.iter().map(|r| r.broker).collect(),
                    info.in_sync.clone(),
                    owned.log.next_offset(),
                    owned.log.high_watermark(),
                    now_ms(),
                ))));
            } else if !leader {
                owned.followers = None;
            }
            let deposed = owned.leader && (!leader || owned.leader_epoch != epoch);
            if let Some(followers) = &owned.followers {
                let mut followers = followers.borrow_mut();
                let replicas: Vec<NodeId> = info.replicas.iter().map(|r| r.broker).collect();
                if followers.replicas != replicas {
                    followers.set_replicas(replicas, now_ms());
                }
                followers.set_in_sync(info.in_sync.clone());
            }
            owned.leader = leader;
            owned.leader_epoch = epoch;
            owned.info = Rc::new(info.clone());
            owned.min_insync = config.resolved_min_insync(info.replicas.len() as u32);
            owned.replica_lag_time_max_ms = config.replica_lag_time_max_ms;
            owned.log.set_retention(
                config.retention_ms.map(Duration::from_millis),
                config.retention_bytes,
            );
            owned.refresh_high_watermark(me);
            let log = owned.log.clone();
            self.owned.borrow_mut().insert(key, owned);
            self.changed();
            if deposed {
                // `acks=all` produces waiting on this leadership's high watermark answer now.
                log.wake_waiters();
            }
        }
        Ok(())
    }

    /// Opens the logs of the partitions in `wanted` that this shard does not hold yet,
    /// `LOG_OPENS_CONCURRENT` at a time, and rebuilds their producers' state.
    async fn open_logs(
        &self,
        wanted: &HashMap<(String, u32), (u64, &PartitionInfo, &TopicConfig)>,
    ) -> Result<HashMap<(String, u32), (PartitionLog, ProducerState)>, StorageError> {
        let permits = Rc::new(glommio::sync::Semaphore::new(LOG_OPENS_CONCURRENT as u64));
        let mut tasks = Vec::new();
        for (key, (topic_id, _, config)) in wanted {
            if self.owned.borrow().contains_key(key) {
                continue;
            }
            let (topic, partition) = key.clone();
            let dir = self.dir(&topic, partition, *topic_id);
            let mut log_config = log_config(config, self.config.mode);
            if topic == crate::groups::coordinator::OFFSETS_TOPIC {
                // The latest record per group and offset is the state.
                log_config.cleanup_policy = crate::storage::CleanupPolicy::Compact;
            }
            let permits = Rc::clone(&permits);
            let task = glommio::spawn_local(async move {
                let _permit = permits
                    .acquire_permit(1)
                    .await
                    .map_err(|_| StorageError::Closed)?;
                let (log, report) = PartitionLog::open(dir, log_config).await?;
                if report.tail.truncated_bytes > 0 {
                    tracing::warn!(%topic, partition, cut = report.tail.truncated_bytes, "recovered a torn log tail");
                }
                let producers = ProducerState::rebuild(&log).await?;
                Ok::<_, StorageError>((log, producers))
            })
            .detach();
            tasks.push((key.clone(), task));
        }
        let mut opened = HashMap::with_capacity(tasks.len());
        let mut failure = None;
        for (key, task) in tasks {
            match task.await {
                Some(Ok(log)) => {
                    opened.insert(key, log);
                }
                Some(Err(error)) => failure = failure.or(Some(error)),
                None => failure = failure.or(Some(StorageError::Closed)),
            }
        }
        match failure {
            None => Ok(opened),
            Some(error) => {
                for (log, _) in opened.into_values() {
                    let _ = log.close().await;
                }
                Err(error)
            }
        }
    }

    /// Flushes and closes every log (graceful shutdown), `LOG_CLOSES_CONCURRENT` at a time:
    /// each close ends with a sync and the clean-shutdown marker's write.
    pub async fn close_all(&self) -> Result<(), StorageError> {
        let logs: Vec<PartitionLog> = self
            .owned
            .borrow_mut()
            .drain()
            .map(|(_, o)| o.log)
            .collect();
        let permits = Rc::new(glommio::sync::Semaphore::new(LOG_CLOSES_CONCURRENT as u64));
        let tasks: Vec<_> = logs
            .into_iter()
            .map(|log| {
                let permits = Rc::clone(&permits);
                glommio::spawn_local(async move {
                    let _permit = permits
                        .acquire_permit(1)
                        .await
                        .map_err(|_| StorageError::Closed)?;
                    log.close().await
                })
                .detach()
            })
            .collect();
        let mut outcome = Ok(());
        for task in tasks {
            let closed = task.await.unwrap_or(Err(StorageError::Closed));
            if outcome.is_ok() {
                outcome = closed;
            }
        }
        outcome
    }

    /// Checkpoints the high watermark of every owned replicated log whose high watermark moved.
    pub async fn checkpoint_high_watermarks(&self) -> Result<(), StorageError> {
        let logs: Vec<PartitionLog> = self
            .owned
            .borrow()
            .values()
            .map(|o| o.log.clone())
            .collect();
        for log in logs {
            match log.checkpoint_high_watermark_if_moved().await {
                // A log closed meanwhile (its partition moved away) has nothing to keep.
                Ok(_) | Err(StorageError::Closed) => {}
                Err(error) => return Err(error),
            }
            glommio::yield_if_needed().await;
        }
        Ok(())
    }

    /// Applies retention, and compaction where it is due, to every owned log.
    pub async fn enforce_retention(&self) -> Result<(), StorageError> {
        let logs: Vec<PartitionLog> = self
            .owned
            .borrow()
            .values()
            .map(|o| o.log.clone())
            .collect();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for log in logs {
            log.enforce_retention(now_ms).await?;
            // The background cleaner: a compaction pass when the log's dirty ratio or a
            // tombstone's delete horizon says so (never for a `Delete` log).
            log.compact_if_due(now_ms).await?;
            glommio::yield_if_needed().await;
        }
        Ok(())
    }
}

/// Shared handle to a shard's partitions.
pub type SharedPartitions = Rc<Partitions>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_found_by_a_borrowed_topic() {
        let mut map: HashMap<(String, u32), u8> = HashMap::new();
        map.insert(("orders".to_string(), 3), 1);
        map.insert(("orders".to_string(), 4), 2);
        map.insert(("order".to_string(), 3), 3);
        assert_eq!(map.get(&("orders", 3u32) as &dyn PartitionKey), Some(&1));
        assert_eq!(map.get(&("orders", 4u32) as &dyn PartitionKey), Some(&2));
        assert_eq!(map.get(&("order", 3u32) as &dyn PartitionKey), Some(&3));
        assert_eq!(map.get(&("orders", 5u32) as &dyn PartitionKey), None);
        assert_eq!(map.get(&("ordersx", 3u32) as &dyn PartitionKey), None);
    }
}
