//! Pure logic of the metadata: validating requests, placing partitions, and applying commands.
//!
//! `apply` is deterministic: every broker applies the same committed commands in the same order
//! and reaches the same state. Decisions that need a choice (placement, new leaders) are either
//! made by the controller before proposing (placement travels inside `CreateTopic`) or derived
//! deterministically from the state inside `apply` (leader moves when a broker dies).

use super::types::{
    Broker, BrokerState, ClusterState, Command, CommandResult, MetadataError, NodeId,
    PartitionInfo, ReplicaPlacement, Topic, TopicConfig,
};
use crate::limits::{TOPIC_NAME_BYTES_MAX, TOPIC_PARTITIONS_MAX};

/// Checks a topic name the way Kafka does: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), MetadataError> {
    let invalid = |reason: &str| {
        Err(MetadataError::InvalidTopicName {
            name: name.chars().take(300).collect(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return invalid("longer than 249 characters");
    }
    if name == "." || name == ".." {
        return invalid("'.' and '..' are reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return invalid("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

pub fn validate_topic_config(config: &TopicConfig) -> Result<(), MetadataError> {
    let invalid = |why: &str| Err(MetadataError::InvalidConfig(why.to_string()));
    if config.message_bytes_max == 0
        || config.message_bytes_max > crate::limits::BATCH_BYTES_MAX as u64
    {
        return invalid("message_bytes_max must be between 1 and 64 MiB");
    }
    if config.segment_bytes < config.message_bytes_max
        || config.segment_bytes > crate::limits::SEGMENT_BYTES_MAX
    {
        return invalid("segment_bytes must hold a message and stay below 4 GiB");
    }
    Ok(())
}

/// A fresh partition on `replicas`: its first replica leads, alone in sync.
fn new_partition(replicas: &[ReplicaPlacement]) -> PartitionInfo {
    PartitionInfo {
        leader: replicas.first().map(|r| r.broker),
        leader_epoch: 0,
        // Only the first leader starts in sync: a follower holds none of the partition's data
        // until it has replicated it, and a replica that is not in sync must never lead
        // (offsets would go back).
        in_sync: replicas.first().map(|r| r.broker).into_iter().collect(),
        replicas: replicas.to_vec(),
        partition_epoch: 0,
        target_replicas: None,
    }
}

/// The shard of `broker` holding the fewest replicas (the lowest on a tie).
fn least_loaded_shard(
    broker: &Broker,
    load: &std::collections::BTreeMap<ReplicaPlacement, u64>,
) -> ReplicaPlacement {
    let shard = (0..broker.shards.max(1))
        .min_by_key(|&shard| {
            (
                load.get(&ReplicaPlacement {
                    broker: broker.id,
                    shard,
                })
                .copied()
                .unwrap_or(0),
                shard,
            )
        })
        .unwrap_or(0);
    ReplicaPlacement {
        broker: broker.id,
        shard,
    }
}

impl ClusterState {
    /// Brokers that may host and lead partitions, by id.
    pub fn live_brokers(&self) -> Vec<&Broker> {
        self.brokers
            .values()
            .filter(|b| b.state == BrokerState::Alive)
            .collect()
    }

    /// Checks a topic creation against the current state (what the controller does before
    /// proposing; `apply` checks again).
    pub fn check_create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        config: &TopicConfig,
    ) -> Result<(), MetadataError> {
        validate_topic_name(name)?;
        if partitions == 0 || partitions > TOPIC_PARTITIONS_MAX {
            return Err(MetadataError::InvalidPartitionCount {
                requested: partitions,
                max: TOPIC_PARTITIONS_MAX,
            });
        }
        validate_topic_config(config)?;
        if self.topics.contains_key(name) {
            return Err(MetadataError::TopicExists(name.to_string()));
        }
        let live = self.live_brokers().len() as u32;
        if replication_factor == 0 || replication_factor > live {
            return Err(MetadataError::ReplicationFactorTooLarge {
                requested: replication_factor,
                live,
            });
        }
        if config.resolved_min_insync(replication_factor) > replication_factor {
            return Err(MetadataError::InvalidConfig(format!(
                "min_insync_replicas {} exceeds the replication factor {replication_factor}",
                config.min_insync_replicas
            )));
        }
        Ok(())
    }

    /// Checks a topic's new configuration against the current state (the controller before
    /// proposing; `apply` again): the topic exists, the configuration is valid for its
    /// replication factor, and only alterable settings change.
    pub fn check_alter_topic_config(
        &self,
        name: &str,
        config: &TopicConfig,
    ) -> Result<(), MetadataError> {
        let topic = self
            .topics
            .get(name)
            .ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))?;
        validate_topic_config(config)?;
        if config.min_insync_replicas == 0 || config.min_insync_replicas > topic.replication_factor
        {
            return Err(MetadataError::InvalidConfig(format!(
                "min_insync_replicas {} must be between 1 and the replication factor {}",
                config.min_insync_replicas, topic.replication_factor
            )));
        }
        let unchanged = |c: &TopicConfig| {
            (
                c.segment_bytes,
                c.segment_age_ms,
                c.flush,
                c.message_bytes_max,
            )
        };
        if unchanged(config) != unchanged(&topic.config) {
            return Err(MetadataError::InvalidConfig(format!(
                "only {} can be changed after creation",
                super::topic_config::ALTERABLE.join(", ")
            )));
        }
        Ok(())
    }

    /// Checks an in-sync change against the current state (the controller before proposing;
    /// `apply` again): the proposer leads at that leader epoch, the partition is at that
    /// partition epoch, and the new set is non-empty, holds the leader, only replicas, each once,
    /// and no replica that is not alive may join.
    pub fn check_alter_in_sync(
        &self,
        topic: &str,
        partition: u32,
        leader: NodeId,
        leader_epoch: u32,
        partition_epoch: u32,
        in_sync: &[NodeId],
    ) -> Result<(), MetadataError> {
        let info = self
            .topics
            .get(topic)
            .ok_or_else(|| MetadataError::UnknownTopic(topic.to_string()))?
            .partitions
            .get(partition as usize)
            .ok_or_else(|| MetadataError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            })?;
        if info.leader != Some(leader) || info.leader_epoch != leader_epoch {
            return Err(MetadataError::FencedLeaderEpoch {
                leader,
                current: info.leader_epoch,
                got: leader_epoch,
            });
        }
        if info.partition_epoch != partition_epoch {
            return Err(MetadataError::StalePartitionEpoch {
                current: info.partition_epoch,
                got: partition_epoch,
            });
        }
        let invalid = |why: String| Err(MetadataError::InvalidInSync(why));
        if !in_sync.contains(&leader) {
            return invalid("the leader must stay in its in-sync set".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for broker in in_sync {
            if !seen.insert(broker) {
                return invalid(format!("broker {broker} listed twice"));
            }
            if !info.replicas.iter().any(|r| r.broker == *broker) {
                return invalid(format!("broker {broker} is not a replica"));
            }
            if !info.in_sync.contains(broker) && !self.is_alive(*broker) {
                return invalid(format!("broker {broker} is not alive and cannot join"));
            }
        }
        Ok(())
    }

    /// Places `partitions` partitions with `replication_factor` replicas each: replicas of a
    /// partition on distinct live brokers, leaders rotated across brokers (starting where the
    /// topic id points, so topics do not all lead on the same broker), and each replica on the
    /// least-loaded shard of its broker. Call after [`ClusterState::check_create_topic`].
    pub fn place_partitions(
        &self,
        partitions: u32,
        replication_factor: u32,
    ) -> Vec<Vec<ReplicaPlacement>> {
        self.place_from(self.next_topic_id as usize, partitions, replication_factor)
    }

    /// Placement of `partitions` partitions whose leaders rotate from live broker `start`.
    fn place_from(
        &self,
        start: usize,
        partitions: u32,
        replication_factor: u32,
    ) -> Vec<Vec<ReplicaPlacement>> {
        let live: Vec<&Broker> = self.live_brokers();
        assert!(
            !live.is_empty() && replication_factor as usize <= live.len(),
            "placement needs enough live brokers"
        );
        let mut load: std::collections::BTreeMap<ReplicaPlacement, u64> =
            std::collections::BTreeMap::new();
        for topic in self.topics.values() {
            for partition in &topic.partitions {
                for replica in &partition.replicas {
                    *load.entry(*replica).or_default() += 1;
                }
            }
        }
        let mut placement = Vec::with_capacity(partitions as usize);
        for p in 0..partitions as usize {
            let mut replicas = Vec::with_capacity(replication_factor as usize);
            for r in 0..replication_factor as usize {
                let broker = live[(start + p + r) % live.len()];
                let replica = least_loaded_shard(broker, &load);
                *load.entry(replica).or_default() += 1;
                replicas.push(replica);
            }
            placement.push(replicas);
        }
        placement
    }

    /// Replica load per (broker, shard): how many partitions' replicas each holds.
    fn replica_load(&self) -> std::collections::BTreeMap<ReplicaPlacement, u64> {
        let mut load = std::collections::BTreeMap::new();
        for partition in self.topics.values().flat_map(|t| &t.partitions) {
            for replica in &partition.replicas {
                *load.entry(*replica).or_default() += 1;
            }
        }
        load
    }

    fn partition_info(&self, topic: &str, partition: u32) -> Result<&PartitionInfo, MetadataError> {
        self.topics
            .get(topic)
            .ok_or_else(|| MetadataError::UnknownTopic(topic.to_string()))?
            .partitions
            .get(partition as usize)
            .ok_or_else(|| MetadataError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            })
    }

    /// Checks growing `topic` to `count` partitions and places the new ones (what the controller
    /// proposes as `Command::AddPartitions`): more than today, at most `TOPIC_PARTITIONS_MAX`,
    /// and enough live brokers for the topic's replication factor.
    pub fn place_added_partitions(
        &self,
        topic: &str,
        count: u32,
    ) -> Result<Vec<Vec<ReplicaPlacement>>, MetadataError> {
        let existing = self
            .topics
            .get(topic)
            .ok_or_else(|| MetadataError::UnknownTopic(topic.to_string()))?;
        let current = existing.partitions.len() as u32;
        if count <= current || count > TOPIC_PARTITIONS_MAX {
            return Err(MetadataError::InvalidPartitionCount {
                requested: count,
                max: TOPIC_PARTITIONS_MAX,
            });
        }
        let live = self.live_brokers().len() as u32;
        if existing.replication_factor > live {
            return Err(MetadataError::ReplicationFactorTooLarge {
                requested: existing.replication_factor,
                live,
            });
        }
        Ok(self.place_from(
            existing.id as usize + current as usize,
            count - current,
            existing.replication_factor,
        ))
    }

    /// Checks placements for new partitions of `topic` (in `apply`): the topic exists, the
    /// count stays within the limit, each list has the replication factor's length, on
    /// distinct known brokers and existing shards.
    fn check_added_partitions(
        &self,
        topic: &str,
        partitions: &[Vec<ReplicaPlacement>],
    ) -> Result<(), MetadataError> {
        let existing = self
            .topics
            .get(topic)
            .ok_or_else(|| MetadataError::UnknownTopic(topic.to_string()))?;
        let total = existing.partitions.len() + partitions.len();
        if partitions.is_empty() || total > TOPIC_PARTITIONS_MAX as usize {
            return Err(MetadataError::InvalidPartitionCount {
                requested: total as u32,
                max: TOPIC_PARTITIONS_MAX,
            });
        }
        for replicas in partitions {
            if replicas.len() != existing.replication_factor as usize {
                return Err(MetadataError::Malformed(
                    "placement does not match the replication factor".into(),
                ));
            }
            self.check_placements(replicas)
                .map_err(MetadataError::Malformed)?;
        }
        Ok(())
    }

    /// Replicas on distinct known brokers, each on a shard its broker has.
    fn check_placements(&self, replicas: &[ReplicaPlacement]) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for replica in replicas {
            if !seen.insert(replica.broker) {
                return Err(format!("broker {} listed twice", replica.broker));
            }
            match self.brokers.get(&replica.broker) {
                None => return Err(format!("unknown broker {}", replica.broker)),
                Some(b) if replica.shard >= b.shards.max(1) => {
                    return Err(format!(
                        "broker {} has no shard {}",
                        replica.broker, replica.shard
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Whether electing the preferred (first) replica of a partition would change its leader;
    /// an error when that replica is not alive and in sync.
    pub fn check_elect_preferred_leader(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<bool, MetadataError> {
        let info = self.partition_info(topic, partition)?;
        let preferred = info.replicas.first().map(|r| r.broker).unwrap_or_default();
        if info.leader == Some(preferred) {
            return Ok(false);
        }
        if !info.in_sync.contains(&preferred) || !self.is_alive(preferred) {
            return Err(MetadataError::PreferredLeaderNotAvailable {
                topic: topic.to_string(),
                partition,
                preferred,
            });
        }
        Ok(true)
    }

    /// Places a reassignment of a partition to `brokers` (what the controller proposes as
    /// `Command::ReassignPartition`): a replica staying keeps its shard, a new one goes to the
    /// least-loaded shard of its broker.
    pub fn place_reassignment(
        &self,
        topic: &str,
        partition: u32,
        brokers: &[NodeId],
    ) -> Result<Vec<ReplicaPlacement>, MetadataError> {
        let info = self.partition_info(topic, partition)?;
        let load = self.replica_load();
        let mut target = Vec::with_capacity(brokers.len());
        for &broker in brokers {
            let placement = match info.replicas.iter().find(|r| r.broker == broker) {
                Some(existing) => *existing,
                None => match self.brokers.get(&broker) {
                    Some(b) => least_loaded_shard(b, &load),
                    None => {
                        return Err(MetadataError::InvalidReassignment(format!(
                            "unknown broker {broker}"
                        )))
                    }
                },
            };
            target.push(placement);
        }
        self.check_reassignment(topic, partition, &target)?;
        Ok(target)
    }

    /// Checks a reassignment (the controller before proposing; `apply` again): no other one in
    /// progress for the partition, a non-empty target on distinct known brokers, replicas that
    /// stay on their shard, added ones on live brokers, and a change.
    pub fn check_reassignment(
        &self,
        topic: &str,
        partition: u32,
        target: &[ReplicaPlacement],
    ) -> Result<(), MetadataError> {
        let info = self.partition_info(topic, partition)?;
        let invalid = |why: String| Err(MetadataError::InvalidReassignment(why));
        if info.target_replicas.is_some() {
            return Err(MetadataError::ReassignmentInProgress {
                topic: topic.to_string(),
                partition,
            });
        }
        if target.is_empty() || target.len() > self.brokers.len() {
            return invalid(format!(
                "{} replicas for a cluster of {} brokers",
                target.len(),
                self.brokers.len()
            ));
        }
        if let Err(why) = self.check_placements(target) {
            return invalid(why);
        }
        for replica in target {
            match info.replicas.iter().find(|r| r.broker == replica.broker) {
                Some(existing) if existing != replica => {
                    return invalid(format!(
                        "broker {} keeps its replica on shard {}",
                        replica.broker, existing.shard
                    ))
                }
                Some(_) => {}
                None if !self.is_alive(replica.broker) => {
                    return invalid(format!("broker {} is not alive", replica.broker))
                }
                None => {}
            }
        }
        let mut old: Vec<NodeId> = info.replicas.iter().map(|r| r.broker).collect();
        let mut new: Vec<NodeId> = target.iter().map(|r| r.broker).collect();
        old.sort_unstable();
        new.sort_unstable();
        if old == new {
            return invalid("the target is the current replica set".into());
        }
        Ok(())
    }

    /// Checks that a reassignment can complete at `partition_epoch`: one is in progress, every
    /// target replica is in sync, and a target replica can lead.
    pub fn check_complete_reassignment(
        &self,
        topic: &str,
        partition: u32,
        partition_epoch: u32,
    ) -> Result<(), MetadataError> {
        let info = self.partition_info(topic, partition)?;
        let not_ready = |reason: &str| {
            Err(MetadataError::ReassignmentNotReady {
                topic: topic.to_string(),
                partition,
                reason: reason.to_string(),
            })
        };
        let Some(target) = &info.target_replicas else {
            return not_ready("no reassignment is in progress");
        };
        if info.partition_epoch != partition_epoch {
            return Err(MetadataError::StalePartitionEpoch {
                current: info.partition_epoch,
                got: partition_epoch,
            });
        }
        if !target.iter().all(|r| info.in_sync.contains(&r.broker)) {
            return not_ready("a target replica is not in sync yet");
        }
        let leader_stays = info
            .leader
            .is_some_and(|l| target.iter().any(|r| r.broker == l));
        if !leader_stays && !target.iter().any(|r| self.is_alive(r.broker)) {
            return not_ready("no live target replica can lead");
        }
        Ok(())
    }

    /// Reassignments whose target replicas are all in sync: (topic, partition, partition epoch)
    /// for the controller to complete.
    pub fn reassignments_ready(&self) -> Vec<(String, u32, u32)> {
        let mut ready = Vec::new();
        for topic in self.topics.values() {
            for (index, info) in topic.partitions.iter().enumerate() {
                if info.target_replicas.is_some()
                    && self
                        .check_complete_reassignment(
                            &topic.name,
                            index as u32,
                            info.partition_epoch,
                        )
                        .is_ok()
                {
                    ready.push((topic.name.clone(), index as u32, info.partition_epoch));
                }
            }
        }
        ready
    }

    /// Applies a committed command. Rejections change nothing, not even the version.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        let result = match command {
            Command::RegisterBroker {
                id,
                address,
                metadata_address,
                shards,
                shard_addresses,
                kafka_addresses,
            } => {
                let was_alive = self
                    .brokers
                    .get(id)
                    .is_some_and(|b| b.state == BrokerState::Alive);
                self.brokers.insert(
                    *id,
                    Broker {
                        id: *id,
                        address: address.clone(),
                        metadata_address: metadata_address.clone(),
                        shards: *shards,
                        shard_addresses: shard_addresses.clone(),
                        state: BrokerState::Alive,
                        kafka_addresses: kafka_addresses.clone(),
                    },
                );
                if !was_alive {
                    self.restore_leaders(*id);
                }
                Ok(None)
            }
            Command::SetBrokerState { id, state } => match self.brokers.get_mut(id) {
                None => Err(MetadataError::UnknownBroker(*id)),
                Some(broker) => {
                    let before = broker.state;
                    broker.state = *state;
                    match (before, *state) {
                        (BrokerState::Alive, BrokerState::Dead | BrokerState::Fenced)
                        | (BrokerState::Fenced, BrokerState::Dead) => self.move_leaders_off(*id),
                        (BrokerState::Dead | BrokerState::Fenced, BrokerState::Alive) => {
                            self.restore_leaders(*id)
                        }
                        _ => {}
                    }
                    Ok(None)
                }
            },
            Command::CreateTopic {
                name,
                replication_factor,
                config,
                partitions,
            } => {
                if self.topics.contains_key(name) {
                    Err(MetadataError::TopicExists(name.clone()))
                } else if let Err(error) = validate_topic_name(name) {
                    Err(error)
                } else if partitions.is_empty()
                    || partitions
                        .iter()
                        .any(|r| r.len() != *replication_factor as usize)
                {
                    Err(MetadataError::Malformed(
                        "placement does not match the replication factor".into(),
                    ))
                } else {
                    let id = self.next_topic_id;
                    self.next_topic_id += 1;
                    let config = TopicConfig {
                        min_insync_replicas: config.resolved_min_insync(*replication_factor),
                        ..config.clone()
                    };
                    let partitions = partitions.iter().map(|r| new_partition(r)).collect();
                    self.topics.insert(
                        name.clone(),
                        Topic {
                            name: name.clone(),
                            id,
                            replication_factor: *replication_factor,
                            config,
                            partitions,
                        },
                    );
                    Ok(Some(id))
                }
            }
            Command::AlterTopicConfig { name, config } => {
                self.check_alter_topic_config(name, config).map(|()| {
                    let topic = self.topics.get_mut(name).expect("checked above");
                    topic.config = config.clone();
                    None
                })
            }
            Command::DeleteTopic { name } => match self.topics.remove(name) {
                Some(_) => Ok(None),
                None => Err(MetadataError::UnknownTopic(name.clone())),
            },
            Command::AlterInSync {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                in_sync,
            } => self
                .check_alter_in_sync(
                    topic,
                    *partition,
                    *leader,
                    *leader_epoch,
                    *partition_epoch,
                    in_sync,
                )
                .map(|()| {
                    let info = self
                        .topics
                        .get_mut(topic)
                        .and_then(|t| t.partitions.get_mut(*partition as usize))
                        .expect("checked above");
                    info.in_sync = in_sync.clone();
                    info.partition_epoch += 1;
                    None
                }),
            Command::ControlledShutdown { id } => match self.brokers.get_mut(id) {
                None => Err(MetadataError::UnknownBroker(*id)),
                Some(broker) if broker.state == BrokerState::Dead => {
                    Err(MetadataError::BrokerDead(*id))
                }
                Some(broker) => {
                    broker.state = BrokerState::Fenced;
                    self.shed_leadership(*id);
                    Ok(None)
                }
            },
            Command::AddPartitions { topic, partitions } => {
                self.check_added_partitions(topic, partitions).map(|()| {
                    let existing = self.topics.get_mut(topic).expect("checked above");
                    existing
                        .partitions
                        .extend(partitions.iter().map(|r| new_partition(r)));
                    None
                })
            }
            Command::ElectPreferredLeader { topic, partition } => self
                .check_elect_preferred_leader(topic, *partition)
                .map(|changes| {
                    let info = self.partition_mut(topic, *partition);
                    if changes {
                        info.leader = info.replicas.first().map(|r| r.broker);
                        info.leader_epoch += 1;
                        info.partition_epoch += 1;
                    }
                    None
                }),
            Command::ReassignPartition {
                topic,
                partition,
                target,
            } => self
                .check_reassignment(topic, *partition, target)
                .map(|()| {
                    let info = self.partition_mut(topic, *partition);
                    let adding: Vec<ReplicaPlacement> = target
                        .iter()
                        .filter(|t| !info.replicas.iter().any(|r| r.broker == t.broker))
                        .copied()
                        .collect();
                    info.replicas.extend(adding);
                    info.target_replicas = Some(target.clone());
                    info.partition_epoch += 1;
                    None
                }),
            Command::CompleteReassignment {
                topic,
                partition,
                partition_epoch,
            } => self
                .check_complete_reassignment(topic, *partition, *partition_epoch)
                .map(|()| {
                    let alive: Vec<NodeId> = self.live_brokers().iter().map(|b| b.id).collect();
                    let info = self.partition_mut(topic, *partition);
                    let target = info.target_replicas.take().expect("checked above");
                    info.in_sync
                        .retain(|b| target.iter().any(|r| r.broker == *b));
                    if !info
                        .leader
                        .is_some_and(|l| target.iter().any(|r| r.broker == l))
                    {
                        info.leader = info.in_sync.iter().copied().find(|b| alive.contains(b));
                        info.leader_epoch += 1;
                    }
                    info.replicas = target;
                    info.partition_epoch += 1;
                    None
                }),
            Command::AssignCoordinator { group, placement } => {
                self.coordinators.entry(group.clone()).or_insert(*placement);
                Ok(None)
            }
            Command::AllocateProducerIds { count } => {
                let start = self.next_producer_id;
                match start
                    .checked_add(*count)
                    .filter(|end| *end <= i64::MAX as u64)
                {
                    Some(end) if *count > 0 => {
                        self.next_producer_id = end;
                        self.version += 1;
                        return CommandResult::ProducerIds {
                            version: self.version,
                            start,
                            count: *count,
                        };
                    }
                    _ => Err(MetadataError::Malformed(
                        "producer id space exhausted or empty block".into(),
                    )),
                }
            }
        };
        match result {
            Ok(topic_id) => {
                self.version += 1;
                match topic_id {
                    Some(topic_id) => CommandResult::TopicCreated {
                        version: self.version,
                        topic_id,
                    },
                    None => CommandResult::Applied {
                        version: self.version,
                    },
                }
            }
            Err(error) => CommandResult::Rejected(error),
        }
    }

    fn partition_mut(&mut self, topic: &str, partition: u32) -> &mut PartitionInfo {
        self.topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(partition as usize))
            .expect("checked before")
    }

    fn is_alive(&self, id: NodeId) -> bool {
        self.brokers
            .get(&id)
            .is_some_and(|b| b.state == BrokerState::Alive)
    }

    /// A broker died: partitions it led move to another live in-sync replica, else (when the
    /// topic allows unclean election) to any live replica, else go offline; it leaves the
    /// in-sync sets (unless it is their last member). Every change bumps the partition epoch.
    fn move_leaders_off(&mut self, dead: NodeId) {
        let alive: Vec<NodeId> = self
            .brokers
            .values()
            .filter(|b| b.state == BrokerState::Alive)
            .map(|b| b.id)
            .collect();
        for topic in self.topics.values_mut() {
            let unclean = topic.config.unclean_leader_election;
            for partition in &mut topic.partitions {
                let before = (partition.leader, partition.in_sync.clone());
                // The last in-sync replica stays in the set: it holds everything acknowledged, so
                // it is the one that may lead again when it returns.
                if partition.in_sync.len() > 1 {
                    partition.in_sync.retain(|&b| b != dead);
                }
                if partition.leader == Some(dead) {
                    partition.leader = partition
                        .in_sync
                        .iter()
                        .copied()
                        .find(|b| *b != dead && alive.contains(b));
                    if partition.leader.is_none() && unclean {
                        // Availability over durability, by the topic's choice.
                        partition.leader = partition
                            .replicas
                            .iter()
                            .map(|r| r.broker)
                            .find(|b| alive.contains(b));
                        if let Some(leader) = partition.leader {
                            partition.in_sync = vec![leader];
                        }
                    }
                    partition.leader_epoch += 1;
                }
                if (partition.leader, &partition.in_sync) != (before.0, &before.1) {
                    partition.partition_epoch += 1;
                }
            }
        }
        for placement in self.coordinators.values_mut() {
            if placement.broker == dead {
                // Re-placed lazily by the controller on the next lookup.
                *placement = ReplicaPlacement {
                    broker: NodeId::MAX,
                    shard: 0,
                };
            }
        }
        self.coordinators.retain(|_, p| p.broker != NodeId::MAX);
    }

    /// A broker stops cleanly: each partition it leads moves to another live in-sync replica
    /// (epoch + 1) and stays with it when there is none; it leaves every in-sync set it is not
    /// the leader (or last member) of. Every change bumps the partition epoch.
    fn shed_leadership(&mut self, leaving: NodeId) {
        let alive: Vec<NodeId> = self.live_brokers().iter().map(|b| b.id).collect();
        for topic in self.topics.values_mut() {
            for partition in &mut topic.partitions {
                let before = (partition.leader, partition.in_sync.clone());
                if partition.leader == Some(leaving) {
                    if let Some(next) = partition
                        .in_sync
                        .iter()
                        .copied()
                        .find(|b| *b != leaving && alive.contains(b))
                    {
                        partition.leader = Some(next);
                        partition.leader_epoch += 1;
                    }
                }
                if partition.leader != Some(leaving) && partition.in_sync.len() > 1 {
                    partition.in_sync.retain(|&b| b != leaving);
                }
                if (partition.leader, &partition.in_sync) != (before.0, &before.1) {
                    partition.partition_epoch += 1;
                }
            }
        }
    }

    /// Partitions `broker` leads, and how many of them have another replica on a live broker
    /// (one a controlled shutdown can move leadership to, now or once it is in sync).
    pub fn led_by(&self, broker: NodeId) -> (usize, usize) {
        let mut led = 0;
        let mut movable = 0;
        for partition in self.topics.values().flat_map(|t| &t.partitions) {
            if partition.leader == Some(broker) {
                led += 1;
                if partition
                    .replicas
                    .iter()
                    .any(|r| r.broker != broker && self.is_alive(r.broker))
                {
                    movable += 1;
                }
            }
        }
        (led, movable)
    }

    /// A broker came back: offline partitions whose in-sync set holds it get it as leader.
    fn restore_leaders(&mut self, back: NodeId) {
        if !self.is_alive(back) {
            return;
        }
        for topic in self.topics.values_mut() {
            for partition in &mut topic.partitions {
                if partition.leader.is_none() && partition.in_sync.contains(&back) {
                    partition.leader = Some(back);
                    partition.leader_epoch += 1;
                    partition.partition_epoch += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(brokers: u64, shards: u32) -> ClusterState {
        let mut state = ClusterState::default();
        for id in 1..=brokers {
            state.apply(&Command::RegisterBroker {
                id,
                address: format!("127.0.0.1:{}", 9000 + id),
                metadata_address: format!("127.0.0.1:{}", 9100 + id),
                shards,
                shard_addresses: Vec::new(),
                kafka_addresses: Vec::new(),
            });
        }
        state
    }

    fn create(state: &mut ClusterState, name: &str, partitions: u32, rf: u32) -> CommandResult {
        state
            .check_create_topic(name, partitions, rf, &TopicConfig::default())
            .unwrap();
        let placement = state.place_partitions(partitions, rf);
        state.apply(&Command::CreateTopic {
            name: name.into(),
            replication_factor: rf,
            config: TopicConfig::default(),
            partitions: placement,
        })
    }

    #[test]
    fn placement_is_even_and_replicas_are_distinct() {
        let mut state = cluster(3, 2);
        create(&mut state, "orders", 12, 3);
        let topic = &state.topics["orders"];
        let mut leaders = std::collections::BTreeMap::new();
        let mut per_shard = std::collections::BTreeMap::new();
        for p in &topic.partitions {
            let mut brokers: Vec<_> = p.replicas.iter().map(|r| r.broker).collect();
            brokers.sort_unstable();
            brokers.dedup();
            assert_eq!(brokers.len(), 3, "replicas on distinct brokers");
            *leaders.entry(p.leader.unwrap()).or_insert(0) += 1;
            for r in &p.replicas {
                *per_shard.entry(*r).or_insert(0) += 1;
            }
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![4, 4, 4]);
        assert!(per_shard.values().all(|&n| n == 6), "{per_shard:?}");
    }

    #[test]
    fn bad_requests_are_typed_errors() {
        let mut state = cluster(2, 1);
        let config = TopicConfig::default();
        assert!(matches!(
            state.check_create_topic("", 1, 1, &config),
            Err(MetadataError::InvalidTopicName { .. })
        ));
        assert!(matches!(
            state.check_create_topic("a/b", 1, 1, &config),
            Err(MetadataError::InvalidTopicName { .. })
        ));
        assert!(matches!(
            state.check_create_topic("..", 1, 1, &config),
            Err(MetadataError::InvalidTopicName { .. })
        ));
        assert!(matches!(
            state.check_create_topic("t", 0, 1, &config),
            Err(MetadataError::InvalidPartitionCount { .. })
        ));
        assert!(matches!(
            state.check_create_topic("t", 1, 3, &config),
            Err(MetadataError::ReplicationFactorTooLarge {
                requested: 3,
                live: 2
            })
        ));
        create(&mut state, "t", 1, 1);
        assert!(matches!(
            state.check_create_topic("t", 1, 1, &config),
            Err(MetadataError::TopicExists(_))
        ));
        let version = state.version;
        assert_eq!(
            state.apply(&Command::DeleteTopic {
                name: "nope".into()
            }),
            CommandResult::Rejected(MetadataError::UnknownTopic("nope".into()))
        );
        assert_eq!(state.version, version, "a rejection changes nothing");
    }

    #[test]
    fn leadership_moves_when_a_broker_dies_and_returns() {
        let mut state = cluster(3, 1);
        create(&mut state, "t", 6, 2);
        create(&mut state, "single", 3, 1);
        let led_by_1: Vec<usize> = state.topics["t"]
            .partitions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.leader == Some(1))
            .map(|(i, _)| i)
            .collect();
        assert!(!led_by_1.is_empty());
        state.apply(&Command::SetBrokerState {
            id: 1,
            state: BrokerState::Dead,
        });
        for (i, p) in state.topics["t"].partitions.iter().enumerate() {
            assert_ne!(p.leader, Some(1));
            if led_by_1.contains(&i) {
                // Its follower never replicated anything, so it is not in sync and must not
                // lead: the partition goes offline rather than lose offsets.
                assert_eq!(p.leader, None, "an out-of-sync follower never leads");
                assert_eq!(p.leader_epoch, 1);
            } else {
                assert!(
                    p.leader.is_some(),
                    "partitions led elsewhere keep their leader"
                );
            }
        }
        let offline = state.topics["single"]
            .partitions
            .iter()
            .filter(|p| p.leader.is_none())
            .count();
        assert_eq!(offline, 1, "the rf-1 partition on broker 1 goes offline");
        state.apply(&Command::SetBrokerState {
            id: 1,
            state: BrokerState::Alive,
        });
        assert!(state.topics["single"]
            .partitions
            .iter()
            .all(|p| p.leader.is_some()));
        for (i, p) in state.topics["t"].partitions.iter().enumerate() {
            if led_by_1.contains(&i) {
                assert_eq!((p.leader, p.leader_epoch), (Some(1), 2), "back, epoch + 1");
            }
        }
    }

    fn alter(
        state: &mut ClusterState,
        leader: NodeId,
        leader_epoch: u32,
        partition_epoch: u32,
        in_sync: &[NodeId],
    ) -> CommandResult {
        state.apply(&Command::AlterInSync {
            topic: "r".into(),
            partition: 0,
            leader,
            leader_epoch,
            partition_epoch,
            in_sync: in_sync.to_vec(),
        })
    }

    /// In-sync changes are fenced by the leader epoch and the partition epoch, so a deposed
    /// or stale leader cannot change the set; and only in-sync replicas are elected.
    #[test]
    fn in_sync_changes_are_fenced_and_only_in_sync_replicas_lead() {
        let mut state = cluster(3, 1);
        create(&mut state, "r", 1, 3);
        let p = state.topics["r"].partitions[0].clone();
        let leader = p.leader.unwrap();
        let followers: Vec<NodeId> = p
            .replicas
            .iter()
            .map(|r| r.broker)
            .filter(|b| *b != leader)
            .collect();
        assert_eq!(state.topics["r"].config.min_insync_replicas, 2);
        assert_eq!(
            (p.leader_epoch, p.partition_epoch, p.in_sync.clone()),
            (0, 0, vec![leader])
        );
        let rejected = |r: CommandResult| matches!(r, CommandResult::Rejected(_));
        let version = state.version;
        assert!(rejected(alter(
            &mut state,
            followers[0],
            0,
            0,
            &[followers[0]]
        )));
        assert!(rejected(alter(&mut state, leader, 1, 0, &[leader])));
        assert!(rejected(alter(&mut state, leader, 0, 3, &[leader])));
        assert!(rejected(alter(&mut state, leader, 0, 0, &[followers[0]])));
        assert!(rejected(alter(&mut state, leader, 0, 0, &[leader, leader])));
        assert!(rejected(alter(&mut state, leader, 0, 0, &[leader, 99])));
        assert_eq!(state.version, version, "rejections change nothing");
        let all = [leader, followers[0], followers[1]];
        assert!(!rejected(alter(&mut state, leader, 0, 0, &all)));
        assert_eq!(state.topics["r"].partitions[0].partition_epoch, 1);
        // The same change again is stale.
        assert!(rejected(alter(&mut state, leader, 0, 0, &all)));

        // The leader dies: an in-sync follower takes over, epoch + 1; the old leader's view is
        // fenced.
        state.apply(&Command::SetBrokerState {
            id: leader,
            state: BrokerState::Dead,
        });
        let p = state.topics["r"].partitions[0].clone();
        assert!(p.leader.is_some_and(|l| followers.contains(&l)));
        assert_eq!(p.leader_epoch, 1);
        assert_eq!(p.partition_epoch, 2);
        assert!(!p.in_sync.contains(&leader));
        assert!(rejected(alter(&mut state, leader, 0, 2, &[leader])));
        // A dead broker cannot join the set.
        let new_leader = p.leader.unwrap();
        assert!(rejected(alter(
            &mut state,
            new_leader,
            1,
            2,
            &[new_leader, leader]
        )));
        assert!(!rejected(alter(
            &mut state,
            new_leader,
            1,
            2,
            &[new_leader]
        )));
        // Its last in-sync replica dies: offline, never an out-of-sync replica.
        let other = followers
            .iter()
            .copied()
            .find(|b| *b != new_leader)
            .unwrap();
        state.apply(&Command::SetBrokerState {
            id: new_leader,
            state: BrokerState::Dead,
        });
        let p = state.topics["r"].partitions[0].clone();
        assert_eq!(p.leader, None, "{other} is alive but not in sync");
        assert_eq!(p.in_sync, vec![new_leader]);
    }

    #[test]
    fn only_alterable_settings_change_and_they_are_checked() {
        let mut state = cluster(3, 1);
        create(&mut state, "a", 1, 3);
        let before = state.topics["a"].config.clone();
        let mut config = before.clone();
        config.retention_ms = None;
        config.min_insync_replicas = 3;
        let applied = state.apply(&Command::AlterTopicConfig {
            name: "a".into(),
            config: config.clone(),
        });
        assert!(
            matches!(applied, CommandResult::Applied { .. }),
            "{applied:?}"
        );
        assert_eq!(state.topics["a"].config, config);
        let refused = |state: &mut ClusterState, config: TopicConfig| {
            let version = state.version;
            let result = state.apply(&Command::AlterTopicConfig {
                name: "a".into(),
                config,
            });
            assert_eq!(state.version, version, "a refused change changes nothing");
            result
        };
        let mut segment = config.clone();
        segment.segment_bytes = 2 << 20;
        assert!(matches!(
            refused(&mut state, segment),
            CommandResult::Rejected(_)
        ));
        let mut too_many = config.clone();
        too_many.min_insync_replicas = 4;
        assert!(matches!(
            refused(&mut state, too_many),
            CommandResult::Rejected(_)
        ));
        assert!(matches!(
            state.apply(&Command::AlterTopicConfig {
                name: "nope".into(),
                config
            }),
            CommandResult::Rejected(MetadataError::UnknownTopic(_))
        ));
    }

    #[test]
    fn unclean_election_is_the_topics_choice() {
        let mut state = cluster(3, 1);
        let config = TopicConfig {
            unclean_leader_election: true,
            min_insync_replicas: 1,
            ..TopicConfig::default()
        };
        let placement = state.place_partitions(1, 3);
        state.apply(&Command::CreateTopic {
            name: "u".into(),
            replication_factor: 3,
            config,
            partitions: placement,
        });
        let leader = state.topics["u"].partitions[0].leader.unwrap();
        state.apply(&Command::SetBrokerState {
            id: leader,
            state: BrokerState::Dead,
        });
        let p = &state.topics["u"].partitions[0];
        let new_leader = p.leader.expect("an out-of-sync replica leads, by choice");
        assert_ne!(new_leader, leader);
        assert_eq!(p.in_sync, vec![new_leader]);
        assert_eq!(p.leader_epoch, 1);
    }

    /// A controlled shutdown moves leadership only to live in-sync replicas (epoch + 1), takes
    /// the broker out of the sets it follows in, keeps a leader that has no successor rather
    /// than leaving its partition offline, and fences the broker until it registers again.
    #[test]
    fn controlled_shutdown_moves_leadership_to_in_sync_replicas_only() {
        let mut state = cluster(3, 1);
        create(&mut state, "r", 3, 3);
        // Partitions 0 and 1 get every replica in sync; partition 2 keeps its leader alone.
        for partition in 0..2u32 {
            let p = state.topics["r"].partitions[partition as usize].clone();
            let all: Vec<NodeId> = p.replicas.iter().map(|r| r.broker).collect();
            let applied = state.apply(&Command::AlterInSync {
                topic: "r".into(),
                partition,
                leader: p.leader.unwrap(),
                leader_epoch: 0,
                partition_epoch: 0,
                in_sync: all,
            });
            assert!(matches!(applied, CommandResult::Applied { .. }));
        }
        let leaving = state.topics["r"].partitions[0].leader.unwrap();
        let lonely = state.topics["r"]
            .partitions
            .iter()
            .position(|p| p.leader == Some(leaving) && p.in_sync.len() == 1);
        let before = state.topics["r"].clone();
        let (led, movable) = state.led_by(leaving);
        assert!(led >= 1 && movable == led);
        assert!(matches!(
            state.apply(&Command::ControlledShutdown { id: leaving }),
            CommandResult::Applied { .. }
        ));
        assert_eq!(state.brokers[&leaving].state, BrokerState::Fenced);
        for (i, (p, old)) in state.topics["r"]
            .partitions
            .iter()
            .zip(&before.partitions)
            .enumerate()
        {
            if Some(i) == lonely {
                assert_eq!(p.leader, Some(leaving), "no successor: it keeps leading");
                assert_eq!(p.leader_epoch, old.leader_epoch);
                continue;
            }
            assert_ne!(p.leader, Some(leaving));
            assert!(
                p.leader.is_some_and(|l| old.in_sync.contains(&l)),
                "an in-sync successor"
            );
            assert!(!p.in_sync.contains(&leaving) || p.in_sync.len() == 1);
            if old.leader == Some(leaving) {
                assert_eq!(p.leader_epoch, old.leader_epoch + 1);
            }
            if *p != *old {
                assert!(p.partition_epoch > old.partition_epoch);
            }
        }
        // Fenced: it cannot join a set again, and new topics are not placed on it.
        assert!(state.live_brokers().iter().all(|b| b.id != leaving));
        // Its lease then expires: what it still leads moves as for any dead broker.
        state.apply(&Command::SetBrokerState {
            id: leaving,
            state: BrokerState::Dead,
        });
        assert!(state.topics["r"]
            .partitions
            .iter()
            .all(|p| p.leader != Some(leaving)));
        assert_eq!(
            state.apply(&Command::ControlledShutdown { id: leaving }),
            CommandResult::Rejected(MetadataError::BrokerDead(leaving))
        );
        assert_eq!(
            state.apply(&Command::ControlledShutdown { id: 99 }),
            CommandResult::Rejected(MetadataError::UnknownBroker(99))
        );
    }

    fn in_sync_all(state: &mut ClusterState, topic: &str, partition: u32) {
        let p = state.topics[topic].partitions[partition as usize].clone();
        let applied = state.apply(&Command::AlterInSync {
            topic: topic.into(),
            partition,
            leader: p.leader.unwrap(),
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            in_sync: p.replicas.iter().map(|r| r.broker).collect(),
        });
        assert!(
            matches!(applied, CommandResult::Applied { .. }),
            "{applied:?}"
        );
    }

    #[test]
    fn partitions_are_added_after_the_existing_ones_and_checked() {
        let mut state = cluster(3, 2);
        create(&mut state, "t", 2, 2);
        let before = state.topics["t"].partitions.clone();
        assert!(matches!(
            state.place_added_partitions("t", 2),
            Err(MetadataError::InvalidPartitionCount { .. })
        ));
        assert!(matches!(
            state.place_added_partitions("nope", 4),
            Err(MetadataError::UnknownTopic(_))
        ));
        let placement = state.place_added_partitions("t", 5).unwrap();
        assert_eq!(placement.len(), 3);
        let applied = state.apply(&Command::AddPartitions {
            topic: "t".into(),
            partitions: placement,
        });
        assert!(matches!(applied, CommandResult::Applied { .. }));
        let topic = &state.topics["t"];
        assert_eq!(topic.partitions.len(), 5);
        assert_eq!(
            &topic.partitions[..2],
            &before[..],
            "existing partitions unchanged"
        );
        for p in &topic.partitions[2..] {
            assert_eq!(p.replicas.len(), 2);
            assert_ne!(p.replicas[0].broker, p.replicas[1].broker);
            assert_eq!(p.in_sync, vec![p.leader.unwrap()]);
        }
        // A placement that breaks the rules is refused in `apply` and changes nothing.
        let version = state.version;
        let bad = vec![vec![
            ReplicaPlacement {
                broker: 1,
                shard: 0,
            },
            ReplicaPlacement {
                broker: 1,
                shard: 1,
            },
        ]];
        assert!(matches!(
            state.apply(&Command::AddPartitions {
                topic: "t".into(),
                partitions: bad,
            }),
            CommandResult::Rejected(MetadataError::Malformed(_))
        ));
        assert_eq!(state.version, version);
    }

    #[test]
    fn the_preferred_leader_is_elected_only_when_in_sync() {
        let mut state = cluster(3, 1);
        create(&mut state, "t", 1, 3);
        let preferred = state.topics["t"].partitions[0].replicas[0].broker;
        assert_eq!(state.check_elect_preferred_leader("t", 0), Ok(false));
        in_sync_all(&mut state, "t", 0);
        state.apply(&Command::ControlledShutdown { id: preferred });
        state.apply(&Command::RegisterBroker {
            id: preferred,
            address: "a".into(),
            metadata_address: "m".into(),
            shards: 1,
            shard_addresses: Vec::new(),
            kafka_addresses: Vec::new(),
        });
        let p = state.topics["t"].partitions[0].clone();
        assert_ne!(p.leader, Some(preferred), "moved away by the shutdown");
        assert!(
            matches!(
                state.check_elect_preferred_leader("t", 0),
                Err(MetadataError::PreferredLeaderNotAvailable { .. })
            ),
            "out of the in-sync set after its shutdown"
        );
        in_sync_all(&mut state, "t", 0);
        let p = state.topics["t"].partitions[0].clone();
        assert!(matches!(
            state.apply(&Command::ElectPreferredLeader {
                topic: "t".into(),
                partition: 0
            }),
            CommandResult::Applied { .. }
        ));
        let after = &state.topics["t"].partitions[0];
        assert_eq!(after.leader, Some(preferred));
        assert_eq!(after.leader_epoch, p.leader_epoch + 1);
        assert_eq!(after.partition_epoch, p.partition_epoch + 1);
        assert!(matches!(
            state.check_elect_preferred_leader("t", 9),
            Err(MetadataError::UnknownPartition { .. })
        ));
    }

    /// A reassignment adds the new replicas as followers, completes only once they are all in
    /// sync, then drops the old ones; leadership moves off a dropped leader, epoch + 1.
    #[test]
    fn a_reassignment_adds_then_drops_replicas() {
        let mut state = cluster(4, 2);
        create(&mut state, "t", 1, 3);
        in_sync_all(&mut state, "t", 0);
        let p = state.topics["t"].partitions[0].clone();
        let old: Vec<NodeId> = p.replicas.iter().map(|r| r.broker).collect();
        let newcomer = (1..=4).find(|b| !old.contains(b)).unwrap();
        let leader = p.leader.unwrap();
        // Drop the leader, keep the others, add the newcomer first.
        let brokers: Vec<NodeId> = std::iter::once(newcomer)
            .chain(old.iter().copied().filter(|b| *b != leader))
            .collect();
        let bad = |brokers: &[NodeId]| state.place_reassignment("t", 0, brokers).unwrap_err();
        assert!(matches!(bad(&[]), MetadataError::InvalidReassignment(_)));
        assert!(matches!(
            bad(&[1, 1]),
            MetadataError::InvalidReassignment(_)
        ));
        assert!(matches!(bad(&[9]), MetadataError::InvalidReassignment(_)));
        assert!(matches!(bad(&old), MetadataError::InvalidReassignment(_)));
        let target = state.place_reassignment("t", 0, &brokers).unwrap();
        for (t, b) in target.iter().zip(&brokers) {
            assert_eq!(t.broker, *b);
        }
        assert!(matches!(
            state.apply(&Command::ReassignPartition {
                topic: "t".into(),
                partition: 0,
                target: target.clone(),
            }),
            CommandResult::Applied { .. }
        ));
        let during = state.topics["t"].partitions[0].clone();
        assert_eq!(during.replicas.len(), 4, "old set plus the newcomer");
        assert_eq!(during.leader, Some(leader));
        assert_eq!(during.target_replicas.as_ref(), Some(&target));
        assert!(matches!(
            state.place_reassignment("t", 0, &old),
            Err(MetadataError::ReassignmentInProgress { .. })
        ));
        assert!(
            state.reassignments_ready().is_empty(),
            "the newcomer is not in sync"
        );
        assert!(matches!(
            state.check_complete_reassignment("t", 0, during.partition_epoch),
            Err(MetadataError::ReassignmentNotReady { .. })
        ));
        in_sync_all(&mut state, "t", 0);
        let ready = state.reassignments_ready();
        assert_eq!(ready.len(), 1);
        let (_, _, epoch) = ready[0].clone();
        assert!(matches!(
            state.apply(&Command::CompleteReassignment {
                topic: "t".into(),
                partition: 0,
                partition_epoch: epoch - 1,
            }),
            CommandResult::Rejected(MetadataError::StalePartitionEpoch { .. })
        ));
        assert!(matches!(
            state.apply(&Command::CompleteReassignment {
                topic: "t".into(),
                partition: 0,
                partition_epoch: epoch,
            }),
            CommandResult::Applied { .. }
        ));
        let after = &state.topics["t"].partitions[0];
        assert_eq!(after.replicas, target);
        assert_eq!(after.target_replicas, None);
        assert!(!after.in_sync.contains(&leader));
        let new_leader = after.leader.unwrap();
        assert_ne!(new_leader, leader);
        assert!(brokers.contains(&new_leader));
        assert_eq!(after.leader_epoch, during.leader_epoch + 1);
    }

    #[test]
    fn min_insync_above_the_replication_factor_is_refused() {
        let state = cluster(3, 1);
        let config = TopicConfig {
            min_insync_replicas: 3,
            ..TopicConfig::default()
        };
        assert!(matches!(
            state.check_create_topic("t", 1, 2, &config),
            Err(MetadataError::InvalidConfig(_))
        ));
        assert!(state.check_create_topic("t", 1, 3, &config).is_ok());
    }

    #[test]
    fn snapshots_round_trip_through_rkyv() {
        let mut state = cluster(3, 2);
        create(&mut state, "orders", 4, 2);
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&state).unwrap();
        let back: ClusterState =
            rkyv::from_bytes::<ClusterState, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(back, state);
    }
}
