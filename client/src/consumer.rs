//! The consumer: assigned partitions are fetched ahead of `poll` with bounded memory, records are
//! delivered in offset order per partition, and the position of each partition is tracked here.
//!
//! Each assigned partition has a *position* (the next offset `poll` returns) and a *fetch
//! position* (the next offset to ask the broker for, ahead of the position by what is buffered).
//! At most one fetch is in flight per broker connection, carrying every eligible partition that
//! connection serves; a partition is eligible while what is buffered for it is under
//! `partition_fetch_bytes_max` and the total under `fetch_bytes_max`, which bounds prefetched
//! memory. Fetches long-poll on the broker (`fetch_wait_max`, `fetch_bytes_min`). A fetch returns
//! whole batches starting with the one holding the requested offset, so records before the
//! position are skipped. Seeking bumps the partition's epoch; fetched data of an older epoch is
//! dropped.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_protocol::batch::ATTR_TIMESTAMP_LOG_APPEND;
use sluice_protocol::native::{
    ApiKey, ErrorCode, FetchPartition, FetchRequest, FetchResponse, OffsetQuery,
};
use sluice_protocol::{
    BatchHeader, BatchIter, Compression as Codec, RecordIter, BATCH_HEADER_BYTES,
};
use tokio::sync::mpsc;

use crate::cluster::Cluster;
use crate::compression;
use crate::config::{ConsumerConfig, OffsetReset};
use crate::error::{stale_metadata_code, Error, Result};
use crate::group::{
    DeliveryGuarantee, MemberSettings, Membership, RebalanceListener, Subscription,
};
use crate::limits::RESPONSE_FRAME_BYTES_MAX;

/// A topic and one of its partitions.
///
/// ```
/// use sluice_client::TopicPartition;
///
/// let tp = TopicPartition::new("orders", 3);
/// assert_eq!((tp.topic.as_str(), tp.partition), ("orders", 3));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

/// Where to move a partition's position.
///
/// ```no_run
/// # async fn example(consumer: &mut sluice_client::Consumer) -> Result<(), sluice_client::Error> {
/// use sluice_client::{Seek, TopicPartition};
///
/// let tp = TopicPartition::new("orders", 0);
/// // Replay the last hour.
/// let hour_ago = std::time::SystemTime::now()
///     .duration_since(std::time::UNIX_EPOCH)
///     .unwrap()
///     .as_millis() as i64
///     - 3_600_000;
/// let offset = consumer.seek(&tp, Seek::Timestamp(hour_ago)).await?;
/// println!("resuming at {offset}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek {
    /// The first record still in the log.
    Earliest,
    /// The end of the log: only records produced from now on.
    Latest,
    /// A given offset (out-of-range offsets are handled by `auto_offset_reset` on fetch).
    Offset(u64),
    /// The first record with a timestamp at or after this one (ms since the Unix epoch); the
    /// end of the log if there is none.
    Timestamp(i64),
}

/// A record as a consumer receives it. Keys, values and header values share the fetched buffer
/// (no copy per record).
///
/// ```no_run
/// # async fn example(consumer: &mut sluice_client::Consumer) -> Result<(), sluice_client::Error> {
/// for record in consumer.poll(std::time::Duration::from_secs(1)).await? {
///     let key = record.key.as_deref().map(String::from_utf8_lossy);
///     println!("{}/{} @{} key {key:?}, {} bytes", record.topic, record.partition,
///              record.offset, record.value.as_ref().map_or(0, |v| v.len()));
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: u64,
    /// Milliseconds since the Unix epoch: the producer's create time, or the broker's append
    /// time for topics that use log-append time.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// An asynchronous consumer of assigned partitions.
///
/// ```no_run
/// # async fn example() -> Result<(), sluice_client::Error> {
/// use std::time::Duration;
/// use sluice_client::{ClientConfig, Consumer, ConsumerConfig, Seek, TopicPartition};
///
/// let mut consumer = Consumer::new(ConsumerConfig::new(ClientConfig::new(["127.0.0.1:9490"])))?;
/// let orders = TopicPartition::new("orders", 0);
/// consumer.assign([orders.clone()]);
/// consumer.seek(&orders, Seek::Earliest).await?;
/// for record in consumer.poll(Duration::from_secs(1)).await? {
///     println!("{} {:?}", record.offset, record.value);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Consumer {
    cluster: Arc<Cluster>,
    config: ConsumerConfig,
    partitions: HashMap<Key, PartitionState>,
    /// Records fetched and decoded, not yet returned, per partition, in order of arrival.
    ready: VecDeque<Fetched>,
    buffered_bytes: usize,
    /// Addresses with a fetch in flight.
    fetching: HashMap<String, ()>,
    results_tx: mpsc::UnboundedSender<FetchOutcome>,
    results: mpsc::UnboundedReceiver<FetchOutcome>,
    next_epoch: u64,
    /// The group this consumer is a member of, after `subscribe`.
    group: Option<GroupState>,
}

/// A subscribed consumer's group state.
struct GroupState {
    membership: Membership,
    /// In a mutex only so that the consumer stays `Sync`; `poll` alone calls it.
    listener: Option<std::sync::Mutex<Box<dyn RebalanceListener>>>,
    /// The positions last committed (what auto-commit compares against).
    committed: HashMap<Key, u64>,
    last_commit: Instant,
}

impl std::fmt::Debug for GroupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupState")
            .field("membership", &self.membership)
            .finish()
    }
}

type Key = (Arc<str>, u32);

#[derive(Debug)]
struct PartitionState {
    /// Next offset `poll` returns; `None` until resolved by a seek or `auto_offset_reset`.
    position: Option<u64>,
    /// Next offset to fetch.
    fetch_position: Option<u64>,
    epoch: u64,
    in_fetch: bool,
    buffered_bytes: usize,
    retry_at: Option<Instant>,
    attempts: u32,
    high_watermark: u64,
}

#[derive(Debug)]
struct Fetched {
    key: Key,
    epoch: u64,
    bytes: usize,
    /// The fetched batches, until `take_ready` decodes them into `records`.
    data: Option<Bytes>,
    records: VecDeque<ConsumerRecord>,
}

#[derive(Debug)]
struct FetchOutcome {
    address: String,
    partitions: Vec<(Key, u64, u64)>,
    result: Result<(FetchResponse, Bytes)>,
}

impl Consumer {
    /// A consumer with no partitions assigned. Connects lazily, on the first `poll` or `seek`.
    pub fn new(config: ConsumerConfig) -> Result<Consumer> {
        config.validate()?;
        let cluster = Cluster::new(config.client.clone())?;
        Ok(Self::with_cluster(config, cluster))
    }

    pub(crate) fn with_cluster(config: ConsumerConfig, cluster: Arc<Cluster>) -> Consumer {
        let (results_tx, results) = mpsc::unbounded_channel();
        Consumer {
            cluster,
            config,
            partitions: HashMap::new(),
            ready: VecDeque::new(),
            buffered_bytes: 0,
            fetching: HashMap::new(),
            results_tx,
            results,
            next_epoch: 1,
            group: None,
        }
    }

    /// Replaces the assignment. Partitions kept keep their position; new ones start per
    /// `auto_offset_reset` unless sought first. Not for a consumer that subscribed to a group
    /// (the group assigns its partitions).
    pub fn assign(&mut self, partitions: impl IntoIterator<Item = TopicPartition>) {
        let wanted: Vec<Key> = partitions
            .into_iter()
            .map(|tp| (Arc::from(tp.topic.as_str()), tp.partition))
            .collect();
        self.partitions.retain(|k, _| wanted.contains(k));
        self.drop_buffered(|k| !wanted.contains(k));
        for key in wanted {
            self.add_partition(key, None);
        }
    }

    fn add_partition(&mut self, key: Key, position: Option<u64>) {
        if self.partitions.contains_key(&key) {
            return;
        }
        let epoch = self.bump_epoch();
        self.partitions.insert(
            key,
            PartitionState {
                position,
                fetch_position: position,
                epoch,
                in_fetch: false,
                buffered_bytes: 0,
                retry_at: None,
                attempts: 0,
                high_watermark: 0,
            },
        );
    }

    fn remove_partitions(&mut self, gone: &BTreeSet<TopicPartition>) {
        let is_gone = |k: &Key| gone.contains(&TopicPartition::new(k.0.as_ref(), k.1));
        self.drop_buffered(is_gone);
        self.partitions.retain(|k, _| !is_gone(k));
    }

    /// Joins consumer group `group`, subscribed to `subscription` (topics or a pattern): the
    /// group's coordinator assigns this consumer its share of the partitions, which `poll`
    /// takes on and gives up as the group changes. Positions start at the group's committed
    /// offsets (else `auto_offset_reset`); offsets are committed per `delivery`.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), sluice_client::Error> {
    /// use std::time::Duration;
    /// use sluice_client::{ClientConfig, Consumer, ConsumerConfig};
    ///
    /// let config = ConsumerConfig::new(ClientConfig::new(["127.0.0.1:9490"]));
    /// let mut consumer = Consumer::new(config)?;
    /// consumer.subscribe("billing", ["orders"])?;
    /// loop {
    ///     for record in consumer.poll(Duration::from_secs(1)).await? {
    ///         println!("{}/{} @{}", record.topic, record.partition, record.offset);
    ///     }
    /// }
    /// # }
    /// ```
    pub fn subscribe(&mut self, group: &str, subscription: impl Into<Subscription>) -> Result<()> {
        if self.group.is_some() {
            return Err(Error::Config(
                "this consumer already subscribed to a group".into(),
            ));
        }
        let subscription = subscription.into();
        if matches!(&subscription, Subscription::Topics(t) if t.is_empty()) {
            return Err(Error::Config(
                "a subscription needs at least one topic".into(),
            ));
        }
        self.assign([]);
        let membership = Membership::start(
            Arc::clone(&self.cluster),
            MemberSettings {
                group: group.to_string(),
                subscription,
                instance_id: self.config.group_instance_id.clone(),
                session_timeout: self.config.group_session_timeout,
                assignor: self.config.group_assignor.clone(),
                max_poll_interval: self.config.max_poll_interval,
            },
        );
        self.group = Some(GroupState {
            membership,
            listener: None,
            committed: HashMap::new(),
            last_commit: Instant::now(),
        });
        Ok(())
    }

    /// Sets the listener told of partitions assigned, revoked and lost (after `subscribe`).
    pub fn set_rebalance_listener(&mut self, listener: impl RebalanceListener + 'static) {
        if let Some(group) = &mut self.group {
            group.listener = Some(std::sync::Mutex::new(Box::new(listener)));
        }
    }

    /// Commits the position of every owned partition (the offset after the last record
    /// `poll` returned) to the group, and waits until it is durable.
    pub async fn commit(&mut self) -> Result<()> {
        let offsets = self.positions_to_commit(true);
        self.commit_offsets(offsets).await
    }

    /// Starts committing the positions of every owned partition; the returned handle yields
    /// the outcome (dropping it does not cancel the commit).
    pub fn commit_async(&mut self) -> Result<tokio::task::JoinHandle<Result<()>>> {
        let offsets = self.positions_to_commit(true);
        let group = self.group.as_ref().ok_or_else(not_subscribed)?;
        let shared = Arc::clone(&group.membership.shared);
        let name = group.membership.group.clone();
        let cluster = Arc::clone(&self.cluster);
        for (key, offset) in &offsets {
            if let Some(g) = self.group.as_mut() {
                g.committed.insert(key.clone(), *offset);
            }
        }
        let offsets: Vec<(TopicPartition, u64)> = offsets
            .into_iter()
            .map(|(k, o)| (TopicPartition::new(k.0.as_ref(), k.1), o))
            .collect();
        Ok(tokio::spawn(async move {
            crate::group::commit_as_member(&cluster, &shared, &name, &offsets).await
        }))
    }

    /// The group's committed offset of a partition (`None`: nothing committed).
    pub async fn committed(&self, tp: &TopicPartition) -> Result<Option<u64>> {
        let group = self.group.as_ref().ok_or_else(not_subscribed)?;
        let found = group
            .membership
            .committed(&self.cluster, std::slice::from_ref(tp))
            .await?;
        Ok(found.get(tp).copied().flatten())
    }

    /// Leaves the group in order: with at-least-once auto-commit, commits the positions
    /// first; then tells the coordinator, so the group rebalances at once rather than after
    /// the session timeout. A consumer dropped without `close` is removed when its session
    /// ends.
    pub async fn close(mut self) -> Result<()> {
        let outcome = if self.auto_commits() {
            self.commit().await
        } else {
            Ok(())
        };
        if let Some(group) = self.group.take() {
            group
                .membership
                .leave(self.cluster.config.request_timeout)
                .await;
        }
        outcome
    }

    fn auto_commits(&self) -> bool {
        self.group.is_some()
            && self.config.delivery == DeliveryGuarantee::AtLeastOnce
            && self.config.auto_commit
    }

    /// Owned partitions' positions that differ from what was last committed (all of them
    /// when `all`).
    fn positions_to_commit(&self, all: bool) -> Vec<(Key, u64)> {
        let Some(group) = &self.group else {
            return Vec::new();
        };
        self.partitions
            .iter()
            .filter_map(|(k, s)| s.position.map(|p| (k.clone(), p)))
            .filter(|(k, p)| all || group.committed.get(k) != Some(p))
            .collect()
    }

    async fn commit_offsets(&mut self, offsets: Vec<(Key, u64)>) -> Result<()> {
        let group = self.group.as_ref().ok_or_else(not_subscribed)?;
        let list: Vec<(TopicPartition, u64)> = offsets
            .iter()
            .map(|(k, o)| (TopicPartition::new(k.0.as_ref(), k.1), *o))
            .collect();
        group.membership.commit(&self.cluster, &list).await?;
        let group = self.group.as_mut().ok_or_else(not_subscribed)?;
        group.last_commit = Instant::now();
        for (key, offset) in offsets {
            group.committed.insert(key, offset);
        }
        Ok(())
    }

    /// Brings the assignment in line with the group: drops everything after a fence, releases
    /// what the coordinator took away (committing first with at-least-once auto-commit), and
    /// takes on what it added, from the committed offsets.
    async fn reconcile_group(&mut self) -> Result<()> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        let (fenced, target, fatal) = {
            let mut shared = group.membership.lock();
            let fenced = std::mem::take(&mut shared.fenced);
            (fenced, shared.target.clone(), shared.fatal.clone())
        };
        if let Some(error) = fatal {
            return Err(error);
        }
        let owned: BTreeSet<TopicPartition> = self.assignment().into_iter().collect();
        if fenced && !owned.is_empty() {
            self.remove_partitions(&owned);
            let group = self.group.as_mut().ok_or_else(not_subscribed)?;
            group.committed.clear();
            let lost: Vec<TopicPartition> = owned.into_iter().collect();
            if let Some(listener) = group.listener.as_mut() {
                listener
                    .get_mut()
                    .unwrap_or_else(|e| e.into_inner())
                    .lost(&lost);
            }
            group.membership.set_owned(BTreeSet::new());
            return Ok(());
        }
        let Some(target) = target else {
            return Ok(());
        };
        let revoked: BTreeSet<TopicPartition> = owned.difference(&target).cloned().collect();
        if !revoked.is_empty() {
            if self.auto_commits() {
                let offsets: Vec<(Key, u64)> = self
                    .positions_to_commit(false)
                    .into_iter()
                    .filter(|(k, _)| revoked.contains(&TopicPartition::new(k.0.as_ref(), k.1)))
                    .collect();
                if let Err(error) = self.commit_offsets(offsets).await {
                    // The next owner starts from the previous commit: records repeat, none
                    // is lost.
                    tracing::warn!(%error, "commit before releasing partitions failed");
                }
            }
            self.remove_partitions(&revoked);
            let group = self.group.as_mut().ok_or_else(not_subscribed)?;
            let list: Vec<TopicPartition> = revoked.iter().cloned().collect();
            if let Some(listener) = group.listener.as_mut() {
                listener
                    .get_mut()
                    .unwrap_or_else(|e| e.into_inner())
                    .revoked(&list);
            }
        }
        let added: Vec<TopicPartition> = target.difference(&owned).cloned().collect();
        if !added.is_empty() {
            let group = self.group.as_ref().ok_or_else(not_subscribed)?;
            let committed = group.membership.committed(&self.cluster, &added).await?;
            for tp in &added {
                let position = committed.get(tp).copied().flatten();
                let key: Key = (Arc::from(tp.topic.as_str()), tp.partition);
                self.add_partition(key.clone(), position);
                if let (Some(p), Some(g)) = (position, self.group.as_mut()) {
                    g.committed.insert(key, p);
                }
            }
            let group = self.group.as_mut().ok_or_else(not_subscribed)?;
            if let Some(listener) = group.listener.as_mut() {
                listener
                    .get_mut()
                    .unwrap_or_else(|e| e.into_inner())
                    .assigned(&added);
            }
        }
        if !revoked.is_empty() || !added.is_empty() {
            let owned: BTreeSet<TopicPartition> = self.assignment().into_iter().collect();
            self.group
                .as_ref()
                .ok_or_else(not_subscribed)?
                .membership
                .set_owned(owned);
        }
        Ok(())
    }

    /// The assigned partitions.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        let mut all: Vec<TopicPartition> = self
            .partitions
            .keys()
            .map(|(t, p)| TopicPartition::new(t.as_ref(), *p))
            .collect();
        all.sort();
        all
    }

    /// Moves a partition's position; records fetched for the old position are dropped.
    pub async fn seek(&mut self, tp: &TopicPartition, to: Seek) -> Result<u64> {
        let key = self.key(tp)?;
        let offset = match to {
            Seek::Offset(o) => o,
            Seek::Earliest => self.list(tp, OffsetQuery::Earliest).await?,
            Seek::Latest => self.list(tp, OffsetQuery::Latest).await?,
            Seek::Timestamp(ts) => match self.list(tp, OffsetQuery::Timestamp(ts)).await {
                Ok(o) => o,
                Err(Error::Broker {
                    code: ErrorCode::OffsetOutOfRange,
                    ..
                }) => self.list(tp, OffsetQuery::Latest).await?,
                Err(e) => return Err(e),
            },
        };
        self.set_position(&key, offset);
        Ok(offset)
    }

    /// The next offset `poll` will return for the partition, if known yet.
    pub fn position(&self, tp: &TopicPartition) -> Result<Option<u64>> {
        let key = self.key(tp)?;
        Ok(self.partitions.get(&key).and_then(|s| s.position))
    }

    /// The partition's high watermark as of the last fetch (0 before any).
    pub fn high_watermark(&self, tp: &TopicPartition) -> Result<u64> {
        let key = self.key(tp)?;
        Ok(self.partitions.get(&key).map_or(0, |s| s.high_watermark))
    }

    /// Returns the records available now, or waits up to `timeout` for some. An empty vector
    /// means none arrived in time. Records of one partition come in offset order.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let deadline = Instant::now() + timeout;
        if let Some(group) = &self.group {
            group.membership.polled();
        }
        // At least once: what the previous poll returned is committed now.
        if self.auto_commits()
            && self
                .group
                .as_ref()
                .is_some_and(|g| g.last_commit.elapsed() >= self.config.auto_commit_interval)
        {
            let offsets = self.positions_to_commit(false);
            if !offsets.is_empty() {
                if let Err(error) = self.commit_offsets(offsets).await {
                    tracing::debug!(%error, "auto-commit failed; trying again at the next poll");
                }
            }
        }
        loop {
            self.reconcile_group().await?;
            self.resolve_positions().await?;
            // The next fetches go out before this poll decodes what it returns, so the broker
            // works while the caller does.
            self.start_fetches();
            let before: Vec<(Key, Option<u64>)> = match (&self.group, self.config.delivery) {
                (Some(_), DeliveryGuarantee::AtMostOnce) => self
                    .partitions
                    .iter()
                    .map(|(k, s)| (k.clone(), s.position))
                    .collect(),
                _ => Vec::new(),
            };
            let records = self.take_ready()?;
            if !records.is_empty() {
                if !before.is_empty() {
                    // At most once: committed before the records are handed out; if the
                    // commit fails they are not handed out (and will be fetched again).
                    let offsets = self.positions_to_commit(false);
                    if let Err(error) = self.commit_offsets(offsets).await {
                        for (key, position) in before {
                            if let Some(p) = position {
                                self.set_position(&key, p);
                            }
                        }
                        return Err(error);
                    }
                }
                return Ok(records);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            // Wake for a fetch result, a partition's retry time, or the deadline.
            let wake = self
                .partitions
                .values()
                .filter_map(|s| s.retry_at)
                .filter(|t| *t > now)
                .min()
                .map_or(deadline, |t| t.min(deadline));
            let changed = self
                .group
                .as_ref()
                .map(|g| Arc::clone(&g.membership.changed));
            let group_changed = async {
                match changed {
                    Some(notify) => notify.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                outcome = tokio::time::timeout_at(wake.into(), self.results.recv()) => {
                    match outcome {
                        Ok(Some(outcome)) => self.accept(outcome)?,
                        Ok(None) => {
                            return Err(Error::Connection {
                                address: "consumer".into(),
                                reason: "fetch channel closed".into(),
                            })
                        }
                        Err(_) => {}
                    }
                }
                _ = group_changed => {}
            }
            // Take every result already waiting before decoding, so one poll sees them all.
            while let Ok(outcome) = self.results.try_recv() {
                self.accept(outcome)?;
            }
        }
    }

    fn key(&self, tp: &TopicPartition) -> Result<Key> {
        self.partitions
            .keys()
            .find(|(t, p)| t.as_ref() == tp.topic && *p == tp.partition)
            .cloned()
            .ok_or_else(|| Error::NotAssigned {
                topic: tp.topic.clone(),
                partition: tp.partition,
            })
    }

    fn bump_epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    async fn list(&self, tp: &TopicPartition, query: OffsetQuery) -> Result<u64> {
        match self
            .cluster
            .list_offset(&tp.topic, tp.partition, query)
            .await?
        {
            Some(o) => Ok(o),
            None => Err(Error::broker(
                ErrorCode::OffsetOutOfRange,
                format!("offset of {}/{} for {query:?}", tp.topic, tp.partition),
            )),
        }
    }

    fn set_position(&mut self, key: &Key, offset: u64) {
        let epoch = self.bump_epoch();
        if let Some(state) = self.partitions.get_mut(key) {
            state.position = Some(offset);
            state.fetch_position = Some(offset);
            state.epoch = epoch;
            state.in_fetch = false;
            state.retry_at = None;
        }
        let key = key.clone();
        self.drop_buffered(|k| *k == key);
    }

    fn drop_buffered(&mut self, drop: impl Fn(&Key) -> bool) {
        let mut freed = 0;
        self.ready.retain(|f| {
            let gone = drop(&f.key);
            if gone {
                freed += f.bytes;
            }
            !gone
        });
        self.buffered_bytes -= freed;
        for (key, state) in self.partitions.iter_mut() {
            if drop(key) {
                state.buffered_bytes = 0;
            }
        }
    }

    /// Gives every partition without a position one, per `auto_offset_reset`.
    async fn resolve_positions(&mut self) -> Result<()> {
        let unresolved: Vec<Key> = self
            .partitions
            .iter()
            .filter(|(_, s)| s.position.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for key in unresolved {
            let tp = TopicPartition::new(key.0.as_ref(), key.1);
            let query = match self.config.auto_offset_reset {
                OffsetReset::Earliest => OffsetQuery::Earliest,
                OffsetReset::Latest => OffsetQuery::Latest,
                OffsetReset::Error => {
                    return Err(Error::OffsetOutOfRange {
                        topic: tp.topic,
                        partition: tp.partition,
                        offset: 0,
                        log_start: 0,
                        high_watermark: 0,
                    })
                }
            };
            let offset = self.list(&tp, query).await?;
            self.set_position(&key, offset);
        }
        Ok(())
    }

    /// Returns up to `poll_records_max` buffered records, advancing positions. Fetched data is
    /// decoded here, when it is about to be returned.
    fn take_ready(&mut self) -> Result<Vec<ConsumerRecord>> {
        let mut out = Vec::new();
        let max = self.config.poll_records_max;
        while out.len() < max {
            let Some(front) = self.ready.front_mut() else {
                break;
            };
            let epoch = front.epoch;
            let current = self
                .partitions
                .get_mut(&front.key)
                .filter(|s| s.epoch == epoch);
            if let Some(state) = current {
                if let Some(data) = front.data.take() {
                    let position = state.position.unwrap_or(0);
                    front.records = decode(&front.key, data, position)?.0.into();
                }
                while out.len() < max {
                    let Some(record) = front.records.pop_front() else {
                        break;
                    };
                    state.position = Some(record.offset + 1);
                    out.push(record);
                }
                if !front.records.is_empty() {
                    break;
                }
                state.buffered_bytes -= front.bytes;
            }
            self.buffered_bytes -= front.bytes;
            self.ready.pop_front();
        }
        Ok(out)
    }

    /// Starts a fetch on each connection without one, for the partitions it serves that have
    /// room for more data.
    fn start_fetches(&mut self) {
        let now = Instant::now();
        let mut by_address: HashMap<String, Vec<(Key, u64, u64)>> = HashMap::new();
        let total_room = self.buffered_bytes < self.config.fetch_bytes_max;
        if !total_room {
            return;
        }
        for (key, state) in self.partitions.iter_mut() {
            let Some(offset) = state.fetch_position else {
                continue;
            };
            // Up to one fetch's worth may wait to be polled while the next is fetched.
            if state.in_fetch
                || state.buffered_bytes > self.config.partition_fetch_bytes_max
                || state.retry_at.is_some_and(|t| t > now)
            {
                continue;
            }
            let Some(address) = self.cluster.address_of(&key.0, key.1) else {
                state.retry_at = Some(now + self.cluster.config.retry_backoff);
                let cluster = Arc::clone(&self.cluster);
                let topic = key.0.to_string();
                tokio::spawn(async move {
                    let _ = cluster.refresh(Some(&[topic])).await;
                });
                continue;
            };
            if self.fetching.contains_key(&address) {
                continue;
            }
            by_address
                .entry(address)
                .or_default()
                .push((key.clone(), offset, state.epoch));
        }
        for (address, partitions) in by_address {
            for (key, _, _) in &partitions {
                if let Some(s) = self.partitions.get_mut(key) {
                    s.in_fetch = true;
                }
            }
            self.fetching.insert(address.clone(), ());
            let request = FetchRequest {
                max_wait_ms: self.config.fetch_wait_max.as_millis() as u32,
                min_bytes: self.config.fetch_bytes_min as u32,
                max_bytes: self.config.fetch_bytes_max as u32,
                partitions: partitions
                    .iter()
                    .map(|(key, offset, _)| FetchPartition {
                        topic: key.0.to_string(),
                        partition: key.1,
                        offset: *offset,
                        max_bytes: self.config.partition_fetch_bytes_max as u32,
                    })
                    .collect(),
            };
            let cluster = Arc::clone(&self.cluster);
            let tx = self.results_tx.clone();
            let timeout = self.cluster.config.request_timeout + self.config.fetch_wait_max;
            tokio::spawn(async move {
                let result = async {
                    let connection = cluster.connection(&address).await?;
                    let response = connection
                        .call_raw(ApiKey::Fetch, &request, Vec::new(), timeout)
                        .await?;
                    let control: FetchResponse = response.control(&address)?;
                    Ok((control, response.data()))
                }
                .await;
                let _ = tx.send(FetchOutcome {
                    address,
                    partitions,
                    result,
                });
            });
        }
    }

    /// Takes in one fetch's results: decodes data, moves fetch positions, handles errors.
    fn accept(&mut self, outcome: FetchOutcome) -> Result<()> {
        self.fetching.remove(&outcome.address);
        let now = Instant::now();
        let mut stale = false;
        let (response, data) = match outcome.result {
            Ok(r) => r,
            Err(error) => {
                tracing::debug!(address = %outcome.address, %error, "fetch failed");
                for (key, _, epoch) in &outcome.partitions {
                    self.retry_later(key, *epoch, now);
                }
                self.refresh_soon(outcome.partitions.iter().map(|(k, _, _)| k));
                return Ok(());
            }
        };
        let mut at = 0usize;
        let mut first_error = None;
        for p in response.partitions {
            let len = p.bytes_len as usize;
            let Some(bytes) = data.get(at..at + len).map(|_| data.slice(at..at + len)) else {
                return Err(Error::Protocol {
                    address: outcome.address,
                    reason: "fetch data shorter than its partitions declare".into(),
                });
            };
            at += len;
            let Some((key, offset, epoch)) = outcome
                .partitions
                .iter()
                .find(|(k, _, _)| k.0.as_ref() == p.topic && k.1 == p.partition)
                .cloned()
            else {
                continue;
            };
            let Some(state) = self.partitions.get_mut(&key) else {
                continue; // Unassigned meanwhile.
            };
            if state.epoch != epoch {
                continue; // Sought meanwhile.
            }
            state.in_fetch = false;
            match p.error {
                ErrorCode::None => {
                    state.attempts = 0;
                    state.high_watermark = p.high_watermark;
                    if bytes.is_empty() {
                        continue;
                    }
                    let next = next_offset(&key, &bytes, offset)?;
                    state.fetch_position = Some(next.max(offset));
                    state.buffered_bytes += len;
                    self.buffered_bytes += len;
                    self.ready.push_back(Fetched {
                        key,
                        epoch,
                        bytes: len,
                        data: Some(bytes),
                        records: VecDeque::new(),
                    });
                }
                ErrorCode::OffsetOutOfRange => match self.config.auto_offset_reset {
                    OffsetReset::Error => {
                        first_error.get_or_insert(Error::OffsetOutOfRange {
                            topic: key.0.to_string(),
                            partition: key.1,
                            offset,
                            log_start: p.log_start,
                            high_watermark: p.high_watermark,
                        });
                        // Stay put until the caller seeks.
                        state.retry_at = Some(now + Duration::from_secs(3600 * 24 * 365));
                    }
                    OffsetReset::Earliest | OffsetReset::Latest => {
                        tracing::debug!(topic = %key.0, partition = key.1, offset,
                            "offset out of range; resetting");
                        state.position = None;
                        state.fetch_position = None;
                    }
                },
                code if stale_metadata_code(code) || code == ErrorCode::Timeout => {
                    stale = true;
                    state.attempts += 1;
                    state.retry_at = Some(now + self.cluster.config.backoff(state.attempts));
                }
                code => {
                    first_error.get_or_insert(Error::broker(
                        code,
                        format!("fetch of {}/{}", key.0, key.1),
                    ));
                    state.attempts += 1;
                    state.retry_at = Some(now + self.cluster.config.backoff(state.attempts));
                }
            }
        }
        // Partitions the response left out are fetched again.
        for (key, _, epoch) in &outcome.partitions {
            if let Some(state) = self.partitions.get_mut(key) {
                if state.epoch == *epoch {
                    state.in_fetch = false;
                }
            }
        }
        if stale {
            self.refresh_soon(outcome.partitions.iter().map(|(k, _, _)| k));
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn retry_later(&mut self, key: &Key, epoch: u64, now: Instant) {
        if let Some(state) = self.partitions.get_mut(key) {
            if state.epoch == epoch {
                state.in_fetch = false;
                state.attempts += 1;
                state.retry_at = Some(now + self.cluster.config.backoff(state.attempts));
            }
        }
    }

    fn refresh_soon<'a>(&self, keys: impl Iterator<Item = &'a Key>) {
        let mut topics: Vec<String> = keys.map(|k| k.0.to_string()).collect();
        topics.sort();
        topics.dedup();
        let cluster = Arc::clone(&self.cluster);
        tokio::spawn(async move {
            if let Err(error) = cluster.refresh(Some(&topics)).await {
                tracing::debug!(%error, "metadata refresh failed");
            }
        });
    }
}

fn not_subscribed() -> Error {
    Error::Config("the consumer has not subscribed to a group".into())
}

/// The offset after the last batch of fetched data, from the batch headers alone (the CRCs are
/// checked when the records are decoded).
fn next_offset(key: &Key, bytes: &[u8], from: u64) -> Result<u64> {
    let mut next = from;
    let mut at = 0usize;
    while at < bytes.len() {
        let header = BatchHeader::parse(&bytes[at..]).map_err(|e| Error::CorruptBatch {
            topic: key.0.to_string(),
            partition: key.1,
            offset: next,
            reason: e.to_string(),
        })?;
        next = header.next_offset();
        at += (header.batch_len as usize).max(1);
    }
    Ok(next)
}

/// Decodes the records at or after `position` from fetched batches; returns them and the offset
/// after the last batch.
fn decode(key: &Key, bytes: Bytes, position: u64) -> Result<(Vec<ConsumerRecord>, u64)> {
    let mut records = Vec::new();
    let mut next = position;
    let corrupt = |offset: u64, reason: String| Error::CorruptBatch {
        topic: key.0.to_string(),
        partition: key.1,
        offset,
        reason,
    };
    for item in BatchIter::new(&bytes) {
        let (header, batch) = item.map_err(|e| corrupt(next, e.to_string()))?;
        next = header.next_offset();
        // Control batches (transaction markers) are never handed to applications.
        if header.next_offset() <= position || header.is_control() {
            continue;
        }
        let batch = bytes.slice_ref(batch);
        let section = batch.slice(BATCH_HEADER_BYTES..);
        let section = match header.compression() {
            Some(Codec::None) => section,
            Some(codec) => Bytes::from(
                compression::decompress(codec, &section, RESPONSE_FRAME_BYTES_MAX)
                    .map_err(|reason| corrupt(header.base_offset, reason))?,
            ),
            None => {
                return Err(corrupt(
                    header.base_offset,
                    format!("unknown compression in attributes {:#x}", header.attributes),
                ))
            }
        };
        let log_append = header.attributes & ATTR_TIMESTAMP_LOG_APPEND != 0;
        for record in RecordIter::new(&header, &section) {
            let record = record.map_err(|e| corrupt(header.base_offset, e.to_string()))?;
            let offset = header.base_offset + u64::from(record.offset_delta);
            if offset < position {
                continue;
            }
            let slice = |b: Option<&[u8]>| b.map(|b| section.slice_ref(b));
            records.push(ConsumerRecord {
                topic: Arc::clone(&key.0),
                partition: key.1,
                offset,
                timestamp: if log_append {
                    header.max_timestamp
                } else {
                    record.timestamp
                },
                key: slice(record.key),
                value: slice(record.value),
                headers: record
                    .headers
                    .iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), slice(*v)))
                    .collect(),
            });
        }
    }
    Ok((records, next))
}
