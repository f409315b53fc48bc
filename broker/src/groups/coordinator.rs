//! The group coordinator of one shard: runs the group state machine ([`super::state`]) for the
//! groups whose partition of the offsets log this shard leads, and keeps their state and
//! committed offsets in that partition ([`super::records`]).
//!
//! - **Who coordinates.** A group's records live in partition [`partition_for`]`(group)` of
//!   [`OFFSETS_TOPIC`]; the shard that leads that partition is the group's coordinator. The
//!   offsets log is an ordinary replicated topic, so a coordinator's broker dying moves
//!   leadership, and with it the coordinator, to an in-sync replica holding every record it
//!   acknowledged.
//! - **Loading.** The first request for a group after this shard became leader (at a leader
//!   epoch) reads the whole partition and rebuilds every group of it; requests arriving
//!   meanwhile get `CoordinatorLoadInProgress`. Members get fresh sessions.
//! - **Writing.** A change is made in memory and its record appended under the partition's
//!   write lock (so records reach the log in the order the changes were made); the answer
//!   waits until the record is below the high watermark: durable on every in-sync replica.
//!   A group change is one record holding the whole group (bounded by `GROUP_MEMBERS_MAX`);
//!   heartbeats that change nothing write nothing. A failed append unloads the partition's
//!   groups (the log is the truth; the next request reloads them).
//! - **Offsets** become visible to `OffsetFetch` once durable on the in-sync replicas.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::FutureExt;
use glommio::sync::Semaphore;
use sluice_protocol::group_api::{
    CommittedOffset, DeleteGroupRequest, DeleteGroupResponse, DescribeGroupRequest,
    DescribeGroupResponse, GroupHeartbeatRequest, GroupHeartbeatResponse, GroupListing,
    GroupPartition, ListGroupsResponse, MemberDescription, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, PartitionError, Subscription,
    NO_MEMBER_EPOCH,
};
use sluice_protocol::native::ErrorCode;
use sluice_protocol::{BatchBuilder, BatchOptions, Compression, RecordIter};

use super::assign::TopicPartition;
use super::classic::ClassicGroup;
use super::records::{encode_classic, partition_for, GroupValue, OffsetValue, RecordKey};
use super::state::{Group, GroupConfig, GroupError, Heartbeat};
use crate::limits::{GROUP_ID_BYTES_MAX, OFFSET_METADATA_BYTES_MAX};
use crate::metadata::ClusterState;
use crate::notify::Notify;
use crate::server::partitions::{now_ms, OwnedPartition, SharedPartitions};
use crate::server::MetadataLink;
use crate::storage::{Appended, StorageError};

mod classic;

/// The internal topic holding every group's state and offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The coordinator's settings (broker flags).
#[derive(Debug, Clone)]
pub struct GroupsConfig {
    /// Partitions of the offsets log when this broker creates it.
    pub offsets_partitions: u32,
    /// Segment size of the offsets log when this broker creates it.
    pub offsets_segment_bytes: u64,
    /// Session granted when a member asks for none.
    pub session_timeout_default: Duration,
    /// Bounds of the sessions members may ask for.
    pub session_timeout_min: Duration,
    pub session_timeout_max: Duration,
    /// How often members heartbeat.
    pub heartbeat_interval: Duration,
    /// Offsets of a group with no members are deleted this long after its last commit.
    pub offsets_retention: Duration,
    /// Longest wait for a record to be durable on the in-sync replicas.
    pub write_timeout: Duration,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            offsets_partitions: 8,
            offsets_segment_bytes: 16 << 20,
            session_timeout_default: Duration::from_secs(45),
            session_timeout_min: Duration::from_millis(500),
            session_timeout_max: Duration::from_secs(1800),
            heartbeat_interval: Duration::from_millis(500),
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// A refusal: the error code and a message for people.
type Refusal = (ErrorCode, String);

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    (code, message.into())
}

fn group_refusal(error: GroupError) -> Refusal {
    let code = match &error {
        GroupError::InvalidGroupId => ErrorCode::InvalidGroupId,
        GroupError::UnknownMember(_) => ErrorCode::UnknownMemberId,
        GroupError::FencedMemberEpoch { .. } => ErrorCode::FencedMemberEpoch,
        GroupError::GroupFull { .. } => ErrorCode::GroupMaxSizeReached,
        GroupError::NotAssigned { .. } => ErrorCode::PartitionNotAssigned,
    };
    (code, error.to_string())
}

#[derive(Debug, Clone)]
struct Committed {
    value: OffsetValue,
    /// Where its record is in the offsets log: a later record wins.
    log_offset: u64,
}

#[derive(Debug)]
struct GroupEntry {
    group: Group,
    /// Members that subscribed with a pattern.
    patterns: BTreeMap<String, String>,
    /// The last group value written (or loaded): a heartbeat whose result encodes the same
    /// writes nothing.
    persisted: Vec<u8>,
    offsets: BTreeMap<TopicPartition, Committed>,
    /// The group's classic (JoinGroup/SyncGroup) state, once a classic member joined: a group
    /// has members of one kind at a time.
    classic: Option<ClassicGroup>,
    /// The last classic value written (or loaded).
    classic_persisted: Vec<u8>,
}

impl GroupEntry {
    fn new(group: Group) -> GroupEntry {
        GroupEntry {
            group,
            patterns: BTreeMap::new(),
            persisted: Vec::new(),
            offsets: BTreeMap::new(),
            classic: None,
            classic_persisted: Vec::new(),
        }
    }

    /// Whether the group has classic members (or new ones on their way).
    fn is_classic(&self) -> bool {
        self.classic.as_ref().is_some_and(|c| !c.is_empty())
    }

    fn has_members(&self) -> bool {
        !self.group.members().is_empty() || self.is_classic()
    }

    fn member_count(&self) -> usize {
        self.group.members().len() + self.classic.as_ref().map_or(0, |c| c.members().len())
    }

    /// The classic group's record, if its persisted form changed (it has one only at rest).
    fn classic_write(&mut self, group: &str) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
        let value = encode_classic(&self.classic.as_ref()?.snapshot()?);
        if value == self.classic_persisted {
            return None;
        }
        self.classic_persisted = value.clone();
        Some((
            RecordKey::ClassicGroup {
                group: group.to_string(),
            }
            .encode(),
            Some(value),
        ))
    }

    fn value(&self) -> Vec<u8> {
        GroupValue {
            group: self.group.snapshot(),
            patterns: self
                .patterns
                .iter()
                .map(|(m, p)| (m.clone(), p.clone()))
                .collect(),
        }
        .encode()
    }

    fn state_name(&self) -> &'static str {
        if let Some(classic) = self.classic.as_ref().filter(|_| self.is_classic()) {
            classic.phase().name()
        } else if self.group.members().is_empty() {
            "Empty"
        } else if self.group.is_stable() {
            "Stable"
        } else {
            "Assigning"
        }
    }

    fn newest_commit(&self) -> i64 {
        self.offsets
            .values()
            .map(|c| c.value.commit_timestamp)
            .max()
            .unwrap_or(0)
    }
}

/// The groups of one partition of the offsets log, loaded at one leader epoch.
#[derive(Debug)]
struct Slot {
    partition: u32,
    epoch: u32,
    ready: Cell<bool>,
    /// Set when an append failed: the slot is dropped and reloaded.
    failed: Cell<bool>,
    groups: RefCell<HashMap<String, GroupEntry>>,
    /// Held from a change in memory until its record is appended.
    write: Semaphore,
    /// Fired at every change classic members wait on (a join phase ending, an assignment
    /// becoming durable) and when the slot is dropped.
    changed: Notify,
}

impl Slot {
    /// The slot's write lock, for a change in memory and the append of its record; refused
    /// once the slot was dropped (leadership moved, an append failed).
    async fn write_step(&self) -> Result<glommio::sync::Permit<'_>, Refusal> {
        let permit = self
            .write
            .acquire_permit(1)
            .await
            .map_err(|_| refuse(ErrorCode::NotCoordinator, "the coordinator is stopping"))?;
        if self.failed.get() {
            return Err(refuse(ErrorCode::NotCoordinator, "the coordinator moved"));
        }
        Ok(permit)
    }
}

/// One group as a metrics scrape shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetrics {
    pub group: String,
    pub members: u32,
    /// Bumped at every membership or subscription change: the group's rebalances.
    pub group_epoch: u32,
    /// (topic, partition, committed offset), in topic and partition order.
    pub offsets: Vec<(String, u32, u64)>,
}

/// A shard's coordinator.
#[derive(Debug)]
pub struct Coordinator {
    config: GroupsConfig,
    partitions: SharedPartitions,
    link: MetadataLink,
    slots: RefCell<HashMap<u32, Rc<Slot>>>,
}

impl Coordinator {
    pub fn new(
        config: GroupsConfig,
        partitions: SharedPartitions,
        link: MetadataLink,
    ) -> Coordinator {
        Coordinator {
            config,
            partitions,
            link,
            slots: RefCell::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &GroupsConfig {
        &self.config
    }

    /// What a metrics scrape shows of the groups this shard coordinates now: members, group
    /// epoch and committed offsets, in group order, with at most `offsets_max` offsets in all
    /// (the rest are counted in the second value). Synchronous and lock-free: it reads the
    /// loaded slots in place, skipping any slot not loaded, failed, or no longer led at its
    /// epoch (its groups are then another shard's to show).
    pub fn metrics_snapshot(&self, offsets_max: usize) -> (Vec<GroupMetrics>, u64) {
        let mut slots: Vec<Rc<Slot>> = self
            .slots
            .borrow()
            .values()
            .filter(|slot| slot.ready.get() && !slot.failed.get())
            .filter(|slot| {
                self.partitions
                    .get(OFFSETS_TOPIC, slot.partition)
                    .is_some_and(|o| o.leader && o.leader_epoch == slot.epoch)
            })
            .cloned()
            .collect();
        slots.sort_by_key(|slot| slot.partition);
        let mut groups = Vec::new();
        let (mut shown, mut omitted) = (0usize, 0u64);
        for slot in slots {
            // Never held across an await, so a borrow fails only if a caller up this stack
            // holds it; the slot is then left out of this scrape rather than panicking.
            let Ok(entries) = slot.groups.try_borrow() else {
                continue;
            };
            let mut names: Vec<&String> = entries.keys().collect();
            names.sort();
            for name in names {
                let entry = &entries[name];
                let room = offsets_max.saturating_sub(shown);
                let offsets: Vec<(String, u32, u64)> = entry
                    .offsets
                    .iter()
                    .take(room)
                    .map(|((topic, partition), c)| (topic.clone(), *partition, c.value.offset))
                    .collect();
                shown += offsets.len();
                omitted += (entry.offsets.len() - offsets.len()) as u64;
                groups.push(GroupMetrics {
                    group: name.clone(),
                    members: entry.group.members().len() as u32,
                    group_epoch: entry.group.group_epoch(),
                    offsets,
                });
            }
        }
        (groups, omitted)
    }

    fn metadata(&self) -> std::sync::Arc<ClusterState> {
        self.link.state.borrow().clone()
    }

    /// The slot serving `group`, loaded; or why not.
    async fn slot_for(&self, group: &str) -> Result<(OwnedPartition, Rc<Slot>), Refusal> {
        if group.is_empty() || group.len() > GROUP_ID_BYTES_MAX {
            return Err(refuse(
                ErrorCode::InvalidGroupId,
                format!("a group id has 1 to {GROUP_ID_BYTES_MAX} bytes"),
            ));
        }
        let count = self
            .metadata()
            .topics
            .get(OFFSETS_TOPIC)
            .map(|t| t.partitions.len() as u32);
        let Some(count) = count else {
            return Err(refuse(
                ErrorCode::CoordinatorNotAvailable,
                "the offsets log does not exist yet: find the coordinator",
            ));
        };
        self.slot_of(partition_for(group, count)).await
    }

    /// The loaded slot of one partition of the offsets log, loading it if needed.
    async fn slot_of(&self, partition: u32) -> Result<(OwnedPartition, Rc<Slot>), Refusal> {
        let owned = self
            .partitions
            .get(OFFSETS_TOPIC, partition)
            .filter(|o| o.leader)
            .ok_or_else(|| {
                refuse(
                    ErrorCode::NotCoordinator,
                    "this shard does not coordinate the group: find the coordinator",
                )
            })?;
        let existing = self.slots.borrow().get(&partition).cloned();
        match existing {
            Some(slot) if slot.epoch == owned.leader_epoch && !slot.failed.get() => {
                if slot.ready.get() {
                    Ok((owned, slot))
                } else {
                    Err(refuse(
                        ErrorCode::CoordinatorLoadInProgress,
                        "loading the group's state",
                    ))
                }
            }
            _ => {
                let slot = Rc::new(Slot {
                    partition,
                    epoch: owned.leader_epoch,
                    ready: Cell::new(false),
                    failed: Cell::new(false),
                    groups: RefCell::new(HashMap::new()),
                    write: Semaphore::new(1),
                    changed: Notify::new(),
                });
                self.slots.borrow_mut().insert(partition, Rc::clone(&slot));
                match self.load(&owned, &slot).await {
                    Ok(()) => {
                        slot.ready.set(true);
                        tracing::info!(
                            partition,
                            epoch = slot.epoch,
                            groups = slot.groups.borrow().len(),
                            "coordinator loaded its groups"
                        );
                        Ok((owned, slot))
                    }
                    Err(error) => {
                        tracing::warn!(%error, partition, "could not load the offsets log");
                        self.unload(&slot);
                        Err(refuse(
                            ErrorCode::CoordinatorNotAvailable,
                            format!("loading the offsets log failed: {error}"),
                        ))
                    }
                }
            }
        }
    }

    fn unload(&self, slot: &Rc<Slot>) {
        slot.failed.set(true);
        slot.changed.notify();
        let mut slots = self.slots.borrow_mut();
        if slots
            .get(&slot.partition)
            .is_some_and(|s| Rc::ptr_eq(s, slot))
        {
            slots.remove(&slot.partition);
        }
    }

    /// Reads the partition's whole log into the slot.
    async fn load(&self, owned: &OwnedPartition, slot: &Slot) -> Result<(), StorageError> {
        let log = &owned.log;
        log.flush().await?;
        let incarnation = incarnation();
        let now = now_ms();
        log.for_each_durable_batch(log.log_start(), |header, batch| {
            if header.is_control() || header.compression() != Some(Compression::None) {
                return;
            }
            let records = &batch[sluice_protocol::BATCH_HEADER_BYTES..];
            for record in RecordIter::new(header, records) {
                let Ok(record) = record else { break };
                let at = header.base_offset + u64::from(record.offset_delta);
                if let Err(error) = apply(slot, record.key, record.value, at, now, incarnation) {
                    tracing::warn!(%error, offset = at, "skipping an offsets-log record");
                }
            }
        })
        .await?;
        Ok(())
    }

    /// Appends records (key, value or tombstone) to the slot's partition; returns where.
    async fn append(
        &self,
        owned: &OwnedPartition,
        slot: &Rc<Slot>,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<Appended, Refusal> {
        if (owned.in_sync().len() as u32) < owned.min_insync {
            return Err(refuse(
                ErrorCode::CoordinatorNotAvailable,
                "the offsets log has too few in-sync replicas",
            ));
        }
        let mut builder = BatchBuilder::new(BatchOptions::default());
        let timestamp = wall_ms();
        for (key, value) in records {
            builder.push(timestamp, Some(key), value.as_deref(), &[]);
        }
        match owned
            .log
            .append(&builder.finish(), owned.leader_epoch)
            .await
        {
            Ok(appended) => Ok(appended),
            Err(error) => {
                tracing::warn!(%error, partition = slot.partition, "offsets-log append failed");
                self.unload(slot);
                Err(refuse(
                    ErrorCode::NotCoordinator,
                    format!("the offsets log refused the write: {error}"),
                ))
            }
        }
    }

    /// Waits until `appended` is durable on every in-sync replica. A deposed leader's high
    /// watermark comes from the new leader's log, which may hold other records at these
    /// offsets: if this shard stops leading at the slot's epoch, the write is not confirmed.
    async fn committed(
        &self,
        owned: &OwnedPartition,
        slot: &Slot,
        appended: Appended,
    ) -> Result<(), Refusal> {
        let log = owned.log.clone();
        let still_leading = || {
            self.partitions
                .get(OFFSETS_TOPIC, slot.partition)
                .is_some_and(|o| o.leader && o.leader_epoch == slot.epoch)
        };
        let wait = async {
            log.wait_durable(appended).await?;
            crate::server::api::produce::wait_high_watermark(
                &log,
                appended.last_offset,
                still_leading,
            )
            .await
        };
        let timeout = self.config.write_timeout;
        let outcome = async { Some(wait.await) }
            .or(async {
                glommio::timer::sleep(timeout).await;
                None
            })
            .await;
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(error)) => Err(refuse(
                ErrorCode::NotCoordinator,
                format!("the offsets log failed: {error}"),
            )),
            None => Err(refuse(
                ErrorCode::CoordinatorNotAvailable,
                "the offsets log's replicas did not confirm the write in time",
            )),
        }
    }

    /// Partition counts of the topics `entry`'s members (and `extra`) subscribe to.
    fn counts(
        &self,
        entry: &GroupEntry,
        extra: Option<&BTreeSet<String>>,
    ) -> BTreeMap<String, u32> {
        let state = self.metadata();
        entry
            .group
            .members()
            .values()
            .flat_map(|m| m.topics.iter())
            .chain(extra.into_iter().flatten())
            .filter_map(|t| {
                state
                    .topics
                    .get(t)
                    .map(|info| (t.clone(), info.partitions.len() as u32))
            })
            .collect()
    }

    /// Topics matching `pattern`, whole names only.
    fn resolve(&self, pattern: &str) -> Result<BTreeSet<String>, Refusal> {
        let regex = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
            refuse(
                ErrorCode::InvalidSubscription,
                format!("bad subscription pattern: {e}"),
            )
        })?;
        Ok(self
            .metadata()
            .topics
            .keys()
            .filter(|t| t.as_str() != OFFSETS_TOPIC && regex.is_match(t))
            .cloned()
            .collect())
    }

    /// Serves a member's heartbeat.
    pub async fn heartbeat(&self, request: GroupHeartbeatRequest) -> GroupHeartbeatResponse {
        let mut response = GroupHeartbeatResponse {
            error: ErrorCode::None,
            message: String::new(),
            member_id: request.member_id.clone().unwrap_or_default(),
            member_epoch: request.member_epoch,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
            session_timeout_ms: 0,
            assignment: Vec::new(),
        };
        match self.heartbeat_inner(request).await {
            Ok((answer, session)) => {
                response.member_id = answer.member_id;
                response.member_epoch = answer.member_epoch;
                response.session_timeout_ms = session as u32;
                response.assignment = answer
                    .assignment
                    .into_iter()
                    .map(|(topic, partition)| GroupPartition { topic, partition })
                    .collect();
            }
            Err((code, message)) => {
                response.error = code;
                response.message = message;
            }
        }
        response
    }

    async fn heartbeat_inner(
        &self,
        request: GroupHeartbeatRequest,
    ) -> Result<(super::state::HeartbeatAnswer, u64), Refusal> {
        let (owned, slot) = self.slot_for(&request.group).await?;
        let permit = slot.write_step().await?;
        // What the subscription resolves to now (patterns are re-resolved on every heartbeat,
        // so matching topics created later are picked up).
        let pattern = match &request.subscription {
            Some(Subscription::Pattern(p)) => Some(p.clone()),
            Some(Subscription::Topics(_)) => None,
            None => request.member_id.as_ref().and_then(|id| {
                slot.groups
                    .borrow()
                    .get(&request.group)
                    .and_then(|e| e.patterns.get(id).cloned())
            }),
        };
        let topics = match (&request.subscription, &pattern) {
            (_, Some(p)) => Some(self.resolve(p)?),
            (Some(Subscription::Topics(list)), None) => {
                Some(list.iter().cloned().collect::<BTreeSet<String>>())
            }
            (None, None) => None,
            (Some(Subscription::Pattern(_)), None) => unreachable!("a pattern resolves above"),
        };
        let assignor = match request.assignor.as_deref() {
            None => None,
            Some(name) => Some(super::assign::AssignorKind::from_name(name).ok_or_else(|| {
                refuse(
                    ErrorCode::UnsupportedAssignor,
                    format!("no assignor {name:?}: uniform (sticky), range or roundrobin"),
                )
            })?),
        };
        if request.member_epoch == 0
            && topics.as_ref().is_none_or(|t| t.is_empty())
            && pattern.is_none()
        {
            return Err(refuse(
                ErrorCode::InvalidSubscription,
                "a member joins with the topics or the pattern it subscribes to",
            ));
        }
        let now = now_ms();
        let (answer, session, write) = {
            let mut groups = slot.groups.borrow_mut();
            if !groups.contains_key(&request.group) && request.member_epoch != 0 {
                return Err(group_refusal(GroupError::UnknownMember(
                    request.member_id.clone().unwrap_or_default(),
                )));
            }
            let entry =
                group_entry(&mut groups, &request.group, incarnation()).map_err(group_refusal)?;
            if entry.is_classic() {
                return Err(refuse(
                    ErrorCode::InconsistentGroupProtocol,
                    "the group has classic (JoinGroup) members",
                ));
            }
            if request.member_epoch == 0 && entry.group.members().is_empty() {
                // The first member of an empty group sets its session timeout and assignor.
                entry
                    .group
                    .set_session_timeout(self.session_timeout(request.session_timeout_ms));
                if let Some(assignor) = assignor {
                    entry.group.set_assignor(assignor);
                }
            }
            let counts = self.counts(entry, topics.as_ref());
            let answer = entry
                .group
                .heartbeat(
                    Heartbeat {
                        member_id: request.member_id.clone(),
                        member_epoch: request.member_epoch,
                        instance_id: request.instance_id.clone(),
                        topics,
                        owned: request
                            .owned
                            .map(|o| o.into_iter().map(|p| (p.topic, p.partition)).collect()),
                    },
                    now,
                    &counts,
                )
                .map_err(group_refusal)?;
            match pattern {
                Some(p) if answer.member_epoch >= 0 => {
                    entry.patterns.insert(answer.member_id.clone(), p);
                }
                _ => {
                    entry.patterns.remove(&answer.member_id);
                }
            }
            let members = entry.group.members();
            entry.patterns.retain(|m, _| members.contains_key(m));
            let value = entry.value();
            let write = (value != entry.persisted).then(|| {
                entry.persisted = value.clone();
                (
                    RecordKey::Group {
                        group: request.group.clone(),
                    }
                    .encode(),
                    Some(value),
                )
            });
            (answer, entry.group.config().session_timeout_ms, write)
        };
        let Some(record) = write else {
            return Ok((answer, session));
        };
        let appended = self.append(&owned, &slot, &[record]).await?;
        drop(permit);
        self.committed(&owned, &slot, appended).await?;
        Ok((answer, session))
    }

    fn session_timeout(&self, asked_ms: u32) -> u64 {
        if asked_ms == 0 {
            return self.config.session_timeout_default.as_millis() as u64;
        }
        (u64::from(asked_ms)).clamp(
            self.config.session_timeout_min.as_millis() as u64,
            self.config.session_timeout_max.as_millis() as u64,
        )
    }

    /// Serves an offset commit.
    pub async fn commit(&self, request: OffsetCommitRequest) -> OffsetCommitResponse {
        match self.commit_inner(&request).await {
            Ok(partitions) => OffsetCommitResponse {
                error: ErrorCode::None,
                message: String::new(),
                partitions,
            },
            Err((error, message)) => OffsetCommitResponse {
                error,
                message,
                partitions: Vec::new(),
            },
        }
    }

    async fn commit_inner(
        &self,
        request: &OffsetCommitRequest,
    ) -> Result<Vec<PartitionError>, Refusal> {
        let (owned, slot) = self.slot_for(&request.group).await?;
        let permit = slot.write_step().await?;
        let state = self.metadata();
        let timestamp = wall_ms();
        let mut results = Vec::with_capacity(request.partitions.len());
        let mut records = Vec::new();
        let mut accepted: Vec<(TopicPartition, OffsetValue)> = Vec::new();
        {
            let mut groups = slot.groups.borrow_mut();
            if request.member_epoch == NO_MEMBER_EPOCH {
                group_entry(&mut groups, &request.group, incarnation()).map_err(group_refusal)?;
            }
            let Some(entry) = groups.get(&request.group) else {
                return Err(group_refusal(GroupError::UnknownMember(
                    request.member_id.clone().unwrap_or_default(),
                )));
            };
            if request.member_epoch == NO_MEMBER_EPOCH && entry.has_members() {
                return Err(refuse(
                    ErrorCode::NonEmptyGroup,
                    "the group has members: commit as a member, or when it is empty",
                ));
            }
            for p in &request.partitions {
                let tp: TopicPartition = (p.topic.clone(), p.partition);
                let mut error = ErrorCode::None;
                let exists = state
                    .topics
                    .get(&p.topic)
                    .is_some_and(|t| (p.partition as usize) < t.partitions.len());
                if !exists {
                    error = ErrorCode::UnknownTopicOrPartition;
                } else if p.metadata.len() > OFFSET_METADATA_BYTES_MAX {
                    error = ErrorCode::OffsetMetadataTooLarge;
                } else if let Some(classic) = entry
                    .classic
                    .as_ref()
                    .filter(|_| entry.is_classic() && request.member_epoch != NO_MEMBER_EPOCH)
                {
                    let member = request.member_id.as_deref().unwrap_or_default();
                    if let Err(code) = classic.check_commit(member, request.member_epoch) {
                        return Err((code, format!("group {:?}: {code:?}", request.group)));
                    }
                } else if request.member_epoch != NO_MEMBER_EPOCH {
                    let member = request.member_id.as_deref().unwrap_or_default();
                    match entry.group.check_commit(member, request.member_epoch, &tp) {
                        Ok(()) => {}
                        Err(e @ GroupError::NotAssigned { .. }) => error = group_refusal(e).0,
                        Err(e) => return Err(group_refusal(e)),
                    }
                }
                if error == ErrorCode::None {
                    let value = OffsetValue {
                        offset: p.offset,
                        commit_timestamp: timestamp,
                        metadata: p.metadata.clone(),
                    };
                    records.push((
                        RecordKey::Offset {
                            group: request.group.clone(),
                            topic: p.topic.clone(),
                            partition: p.partition,
                        }
                        .encode(),
                        Some(value.encode()),
                    ));
                    accepted.push((tp, value));
                }
                results.push(PartitionError {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    error,
                });
            }
        }
        if records.is_empty() {
            return Ok(results);
        }
        let appended = self.append(&owned, &slot, &records).await?;
        drop(permit);
        self.committed(&owned, &slot, appended).await?;
        // Visible once durable on the in-sync replicas; a later commit already applied wins.
        if let Some(entry) = slot.groups.borrow_mut().get_mut(&request.group) {
            for (i, (tp, value)) in accepted.into_iter().enumerate() {
                let log_offset = appended.base_offset + i as u64;
                let newer = entry
                    .offsets
                    .get(&tp)
                    .is_none_or(|c| c.log_offset < log_offset);
                if newer {
                    entry.offsets.insert(tp, Committed { value, log_offset });
                }
            }
        }
        Ok(results)
    }

    /// Serves an offset fetch.
    pub async fn fetch_offsets(&self, request: OffsetFetchRequest) -> OffsetFetchResponse {
        let mut response = OffsetFetchResponse {
            error: ErrorCode::None,
            message: String::new(),
            partitions: Vec::new(),
        };
        let slot = match self.slot_for(&request.group).await {
            Ok((_, slot)) => slot,
            Err((code, message)) => {
                response.error = code;
                response.message = message;
                return response;
            }
        };
        let groups = slot.groups.borrow();
        let entry = groups.get(&request.group);
        let committed = |tp: &TopicPartition| entry.and_then(|e| e.offsets.get(tp));
        let describe = |tp: TopicPartition, c: Option<&Committed>| CommittedOffset {
            topic: tp.0,
            partition: tp.1,
            offset: c.map(|c| c.value.offset),
            metadata: c.map(|c| c.value.metadata.clone()).unwrap_or_default(),
            commit_timestamp: c.map_or(-1, |c| c.value.commit_timestamp),
        };
        response.partitions = match request.partitions {
            Some(list) => list
                .into_iter()
                .map(|p| {
                    let tp = (p.topic, p.partition);
                    let c = committed(&tp);
                    describe(tp, c)
                })
                .collect(),
            None => entry
                .map(|e| {
                    e.offsets
                        .iter()
                        .map(|(tp, c)| describe(tp.clone(), Some(c)))
                        .collect()
                })
                .unwrap_or_default(),
        };
        response
    }

    /// The groups of every partition of the offsets log this shard leads.
    pub async fn list(&self) -> ListGroupsResponse {
        let mut groups = Vec::new();
        let count = self
            .metadata()
            .topics
            .get(OFFSETS_TOPIC)
            .map_or(0, |t| t.partitions.len() as u32);
        for partition in 0..count {
            if !self
                .partitions
                .get(OFFSETS_TOPIC, partition)
                .is_some_and(|o| o.leader)
            {
                continue;
            }
            let slot = match self.slot_of(partition).await {
                Ok((_, slot)) => slot,
                Err((error, _)) => {
                    return ListGroupsResponse {
                        error,
                        groups: Vec::new(),
                    }
                }
            };
            for (name, entry) in slot.groups.borrow().iter() {
                let classic = entry.is_classic();
                groups.push(GroupListing {
                    group: name.clone(),
                    state: entry.state_name().to_string(),
                    members: entry.member_count() as u32,
                    group_type: if classic { "classic" } else { "consumer" }.to_string(),
                    protocol_type: entry
                        .classic
                        .as_ref()
                        .filter(|_| classic)
                        .and_then(|c| c.protocol_type())
                        .unwrap_or("consumer")
                        .to_string(),
                });
            }
        }
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        ListGroupsResponse {
            error: ErrorCode::None,
            groups,
        }
    }

    /// Describes one group: its state, members, assignment and committed offsets.
    pub async fn describe(&self, request: DescribeGroupRequest) -> DescribeGroupResponse {
        let mut response = DescribeGroupResponse {
            error: ErrorCode::None,
            message: String::new(),
            group: request.group.clone(),
            state: "Dead".into(),
            group_epoch: 0,
            assignor: String::new(),
            members: Vec::new(),
            offsets: Vec::new(),
        };
        let slot = match self.slot_for(&request.group).await {
            Ok((_, slot)) => slot,
            Err((code, message)) => {
                response.error = code;
                response.message = message;
                return response;
            }
        };
        let groups = slot.groups.borrow();
        let Some(entry) = groups.get(&request.group) else {
            response.error = ErrorCode::GroupIdNotFound;
            response.message = format!("no group {:?}", request.group);
            return response;
        };
        let partitions = |set: &BTreeSet<TopicPartition>| -> Vec<GroupPartition> {
            set.iter()
                .map(|(topic, partition)| GroupPartition {
                    topic: topic.clone(),
                    partition: *partition,
                })
                .collect()
        };
        response.state = entry.state_name().into();
        response.group_epoch = entry.group.group_epoch();
        response.assignor = entry.group.config().assignor.name().into();
        response.members = entry
            .group
            .members()
            .values()
            .map(|m| MemberDescription {
                member_id: m.member_id.clone(),
                instance_id: m.instance_id.clone(),
                member_epoch: m.member_epoch,
                subscription: match entry.patterns.get(&m.member_id) {
                    Some(p) => Subscription::Pattern(p.clone()),
                    None => Subscription::Topics(m.topics.iter().cloned().collect()),
                },
                assignment: partitions(&m.held),
                target: partitions(
                    &entry
                        .group
                        .target()
                        .get(&m.member_id)
                        .cloned()
                        .unwrap_or_default(),
                ),
            })
            .collect();
        response.offsets = entry
            .offsets
            .iter()
            .map(|(tp, c)| CommittedOffset {
                topic: tp.0.clone(),
                partition: tp.1,
                offset: Some(c.value.offset),
                metadata: c.value.metadata.clone(),
                commit_timestamp: c.value.commit_timestamp,
            })
            .collect();
        response
    }

    /// Deletes a group with no members, with its offsets.
    pub async fn delete(&self, request: DeleteGroupRequest) -> DeleteGroupResponse {
        match self.delete_inner(&request.group, false).await {
            Ok(()) => DeleteGroupResponse {
                error: ErrorCode::None,
                message: String::new(),
            },
            Err((error, message)) => DeleteGroupResponse { error, message },
        }
    }

    /// Writes tombstones for a group and its offsets, then forgets it. `expired`: only if it
    /// is still empty and past the offsets retention (the timer's deletion).
    async fn delete_inner(&self, group: &str, expired: bool) -> Result<(), Refusal> {
        let (owned, slot) = self.slot_for(group).await?;
        let permit = slot.write_step().await?;
        let records = {
            let groups = slot.groups.borrow();
            let Some(entry) = groups.get(group) else {
                return Err(refuse(
                    ErrorCode::GroupIdNotFound,
                    format!("no group {group:?}"),
                ));
            };
            if entry.has_members() {
                return Err(refuse(
                    ErrorCode::NonEmptyGroup,
                    "the group has members: stop them first",
                ));
            }
            if expired && !self.retention_over(entry) {
                return Ok(());
            }
            let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = entry
                .offsets
                .keys()
                .map(|(topic, partition)| {
                    (
                        RecordKey::Offset {
                            group: group.to_string(),
                            topic: topic.clone(),
                            partition: *partition,
                        }
                        .encode(),
                        None,
                    )
                })
                .collect();
            records.push((
                RecordKey::Group {
                    group: group.to_string(),
                }
                .encode(),
                None,
            ));
            if !entry.classic_persisted.is_empty() {
                records.push((
                    RecordKey::ClassicGroup {
                        group: group.to_string(),
                    }
                    .encode(),
                    None,
                ));
            }
            records
        };
        let mut appended = None;
        for chunk in records.chunks(1_000) {
            appended = Some(self.append(&owned, &slot, chunk).await?);
        }
        slot.groups.borrow_mut().remove(group);
        drop(permit);
        if let Some(appended) = appended {
            self.committed(&owned, &slot, appended).await?;
        }
        tracing::info!(group, expired, "group deleted");
        Ok(())
    }

    fn retention_over(&self, entry: &GroupEntry) -> bool {
        !entry.has_members()
            && entry.newest_commit() + (self.config.offsets_retention.as_millis() as i64)
                < wall_ms()
    }

    /// Ends the sessions that expired and deletes groups past their offsets retention, in
    /// every loaded slot this shard still leads. Runs on a timer.
    pub async fn tick(&self) {
        let slots: Vec<Rc<Slot>> = self.slots.borrow().values().cloned().collect();
        for slot in slots {
            if !slot.ready.get() || slot.failed.get() {
                continue;
            }
            let Some(owned) = self
                .partitions
                .get(OFFSETS_TOPIC, slot.partition)
                .filter(|o| o.leader && o.leader_epoch == slot.epoch)
            else {
                // Leadership moved: forget the groups (the new leader loads them).
                self.unload(&slot);
                continue;
            };
            let names: Vec<String> = slot.groups.borrow().keys().cloned().collect();
            for name in names {
                let Ok(permit) = slot.write.acquire_permit(1).await else {
                    return;
                };
                if slot.failed.get() {
                    break;
                }
                let now = now_ms();
                let (write, expired_group) = {
                    let mut groups = slot.groups.borrow_mut();
                    let Some(entry) = groups.get_mut(&name) else {
                        continue;
                    };
                    let counts = self.counts(entry, None);
                    let gone = entry.group.expire(now, &counts);
                    if !gone.is_empty() {
                        tracing::info!(group = %name, members = ?gone, "sessions expired");
                        let members = entry.group.members();
                        entry.patterns.retain(|m, _| members.contains_key(m));
                    }
                    if entry.classic.as_mut().is_some_and(|c| c.tick(now)) {
                        slot.changed.notify();
                    }
                    let value = entry.value();
                    let mut write: Vec<_> = (value != entry.persisted)
                        .then(|| {
                            entry.persisted = value.clone();
                            (
                                RecordKey::Group {
                                    group: name.clone(),
                                }
                                .encode(),
                                Some(value),
                            )
                        })
                        .into_iter()
                        .collect();
                    write.extend(entry.classic_write(&name));
                    (write, self.retention_over(entry))
                };
                if !write.is_empty() {
                    match self.append(&owned, &slot, &write).await {
                        Ok(appended) => {
                            drop(permit);
                            let _ = self.committed(&owned, &slot, appended).await;
                        }
                        Err(_) => break,
                    }
                } else {
                    drop(permit);
                }
                if expired_group {
                    let _ = self.delete_inner(&name, true).await;
                }
                glommio::yield_if_needed().await;
            }
        }
    }
}

/// Applies one record read from the offsets log to the slot.
fn apply(
    slot: &Slot,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    at: u64,
    now: u64,
    incarnation: u64,
) -> Result<(), super::records::RecordError> {
    let key = RecordKey::decode(key.unwrap_or_default())?;
    let mut groups = slot.groups.borrow_mut();
    let group = key.group().to_string();
    let entry = |groups| {
        group_entry(groups, &group, incarnation)
            .map_err(|e| super::records::RecordError(e.to_string()))
    };
    match (key, value) {
        (
            RecordKey::Offset {
                topic, partition, ..
            },
            Some(value),
        ) => {
            let value = OffsetValue::decode(value)?;
            entry(&mut groups)?.offsets.insert(
                (topic, partition),
                Committed {
                    value,
                    log_offset: at,
                },
            );
        }
        (
            RecordKey::Offset {
                topic, partition, ..
            },
            None,
        ) => {
            if let Some(e) = groups.get_mut(&group) {
                e.offsets.remove(&(topic, partition));
            }
        }
        (RecordKey::Group { .. }, Some(value)) => {
            let decoded = GroupValue::decode(value)?;
            let mut g = Group::restore(decoded.group, now)
                .map_err(|e| super::records::RecordError(e.to_string()))?;
            g.set_incarnation(incarnation);
            let e = entry(&mut groups)?;
            e.group = g;
            e.patterns = decoded.patterns.into_iter().collect();
            e.persisted = value.to_vec();
        }
        (RecordKey::Group { .. }, None) => {
            groups.remove(&group);
        }
        (RecordKey::ClassicGroup { .. }, Some(value)) => {
            let snapshot = super::records::decode_classic(value)?;
            let mut classic = ClassicGroup::restore(snapshot, now)
                .map_err(|e| super::records::RecordError(format!("{e:?}")))?;
            classic.set_incarnation(incarnation);
            let e = entry(&mut groups)?;
            e.classic = Some(classic);
            e.classic_persisted = value.to_vec();
        }
        (RecordKey::ClassicGroup { .. }, None) => {
            if let Some(e) = groups.get_mut(&group) {
                e.classic = None;
                e.classic_persisted.clear();
            }
        }
    }
    Ok(())
}

/// The group's entry, made (empty, with the default configuration) if there is none.
fn group_entry<'a>(
    groups: &'a mut HashMap<String, GroupEntry>,
    group: &str,
    incarnation: u64,
) -> Result<&'a mut GroupEntry, GroupError> {
    match groups.entry(group.to_string()) {
        std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
        std::collections::hash_map::Entry::Vacant(v) => {
            let mut g = Group::new(group, GroupConfig::default())?;
            g.set_incarnation(incarnation);
            Ok(v.insert(GroupEntry::new(g)))
        }
    }
}

/// Milliseconds since the Unix epoch (commit timestamps).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A value that differs between coordinator incarnations (part of member ids).
fn incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}
