//! Earlier layouts of the archived [`ClusterState`], kept so a broker reads snapshots written
//! by the previous version (see `CLUSTER_STATE_SCHEMA` in `store.rs`). Each module holds the
//! types of one schema that differ from the current ones, and converts into the current state.

/// Schema 1: before partition epochs and the topic's replication settings.
pub mod v1 {
    use std::collections::BTreeMap;

    use super::v4::Broker;
    use crate::metadata::types::{
        ClusterState as Current, FlushSetting, NodeId, PartitionInfo as CurrentPartition,
        ReplicaPlacement, Topic as CurrentTopic, TopicConfig as CurrentConfig,
    };

    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct TopicConfig {
        pub segment_bytes: u64,
        pub segment_age_ms: Option<u64>,
        pub retention_ms: Option<u64>,
        pub retention_bytes: Option<u64>,
        pub flush: FlushSetting,
        pub message_bytes_max: u64,
    }

    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct PartitionInfo {
        pub replicas: Vec<ReplicaPlacement>,
        pub leader: Option<NodeId>,
        pub leader_epoch: u32,
        pub in_sync: Vec<NodeId>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct Topic {
        pub name: String,
        pub id: u64,
        pub replication_factor: u32,
        pub config: TopicConfig,
        pub partitions: Vec<PartitionInfo>,
    }

    #[derive(
        Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
    )]
    pub struct ClusterState {
        pub version: u64,
        pub brokers: BTreeMap<NodeId, Broker>,
        pub topics: BTreeMap<String, Topic>,
        pub coordinators: BTreeMap<String, ReplicaPlacement>,
        pub next_topic_id: u64,
        pub next_producer_id: u64,
    }

    impl From<ClusterState> for Current {
        fn from(old: ClusterState) -> Current {
            Current {
                version: old.version,
                brokers: super::v4::brokers(old.brokers),
                topics: old
                    .topics
                    .into_iter()
                    .map(|(name, t)| {
                        let config = CurrentConfig {
                            segment_bytes: t.config.segment_bytes,
                            segment_age_ms: t.config.segment_age_ms,
                            retention_ms: t.config.retention_ms,
                            retention_bytes: t.config.retention_bytes,
                            flush: t.config.flush,
                            message_bytes_max: t.config.message_bytes_max,
                            ..CurrentConfig::default()
                        };
                        let config = CurrentConfig {
                            min_insync_replicas: config.resolved_min_insync(t.replication_factor),
                            ..config
                        };
                        let topic = CurrentTopic {
                            name: t.name,
                            id: t.id,
                            replication_factor: t.replication_factor,
                            config,
                            partitions: t
                                .partitions
                                .into_iter()
                                .map(|p| CurrentPartition {
                                    replicas: p.replicas,
                                    leader: p.leader,
                                    leader_epoch: p.leader_epoch,
                                    in_sync: p.in_sync,
                                    partition_epoch: 0,
                                    target_replicas: None,
                                })
                                .collect(),
                        };
                        (name, topic)
                    })
                    .collect(),
                coordinators: old.coordinators,
                next_topic_id: old.next_topic_id,
                next_producer_id: old.next_producer_id,
            }
        }
    }
}

/// Schema 2: before reassignments (`PartitionInfo::target_replicas`).
pub mod v2 {
    use std::collections::BTreeMap;

    use super::v3::TopicConfig;
    use super::v4::Broker;
    use crate::metadata::types::{
        ClusterState as Current, NodeId, PartitionInfo as CurrentPartition, ReplicaPlacement,
        Topic as CurrentTopic,
    };

    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct PartitionInfo {
        pub replicas: Vec<ReplicaPlacement>,
        pub leader: Option<NodeId>,
        pub leader_epoch: u32,
        pub in_sync: Vec<NodeId>,
        pub partition_epoch: u32,
    }

    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct Topic {
        pub name: String,
        pub id: u64,
        pub replication_factor: u32,
        pub config: TopicConfig,
        pub partitions: Vec<PartitionInfo>,
    }

    #[derive(
        Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
    )]
    pub struct ClusterState {
        pub version: u64,
        pub brokers: BTreeMap<NodeId, Broker>,
        pub topics: BTreeMap<String, Topic>,
        pub coordinators: BTreeMap<String, ReplicaPlacement>,
        pub next_topic_id: u64,
        pub next_producer_id: u64,
    }

    impl From<ClusterState> for Current {
        fn from(old: ClusterState) -> Current {
            Current {
                version: old.version,
                brokers: super::v4::brokers(old.brokers),
                topics: old
                    .topics
                    .into_iter()
                    .map(|(name, t)| {
                        let topic = CurrentTopic {
                            name: t.name,
                            id: t.id,
                            replication_factor: t.replication_factor,
                            config: t.config.into(),
                            partitions: t
                                .partitions
                                .into_iter()
                                .map(|p| CurrentPartition {
                                    replicas: p.replicas,
                                    leader: p.leader,
                                    leader_epoch: p.leader_epoch,
                                    in_sync: p.in_sync,
                                    partition_epoch: p.partition_epoch,
                                    target_replicas: None,
                                })
                                .collect(),
                        };
                        (name, topic)
                    })
                    .collect(),
                coordinators: old.coordinators,
                next_topic_id: old.next_topic_id,
                next_producer_id: old.next_producer_id,
            }
        }
    }
}

/// Schema 3: before the topic's `cleanup_policy`.
pub mod v3 {
    use std::collections::BTreeMap;

    use super::v4::Broker;
    use crate::metadata::types::{
        ClusterState as Current, FlushSetting, NodeId, PartitionInfo, ReplicaPlacement,
        Topic as CurrentTopic, TopicConfig as CurrentConfig,
    };

    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct TopicConfig {
        pub segment_bytes: u64,
        pub segment_age_ms: Option<u64>,
        pub retention_ms: Option<u64>,
        pub retention_bytes: Option<u64>,
        pub flush: FlushSetting,
        pub message_bytes_max: u64,
        pub min_insync_replicas: u32,
        pub replica_lag_time_max_ms: u64,
        pub unclean_leader_election: bool,
    }

    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct Topic {
        pub name: String,
        pub id: u64,
        pub replication_factor: u32,
        pub config: TopicConfig,
        pub partitions: Vec<PartitionInfo>,
    }

    #[derive(
        Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
    )]
    pub struct ClusterState {
        pub version: u64,
        pub brokers: BTreeMap<NodeId, Broker>,
        pub topics: BTreeMap<String, Topic>,
        pub coordinators: BTreeMap<String, ReplicaPlacement>,
        pub next_topic_id: u64,
        pub next_producer_id: u64,
    }

    impl From<TopicConfig> for CurrentConfig {
        fn from(c: TopicConfig) -> CurrentConfig {
            CurrentConfig {
                segment_bytes: c.segment_bytes,
                segment_age_ms: c.segment_age_ms,
                retention_ms: c.retention_ms,
                retention_bytes: c.retention_bytes,
                flush: c.flush,
                message_bytes_max: c.message_bytes_max,
                min_insync_replicas: c.min_insync_replicas,
                replica_lag_time_max_ms: c.replica_lag_time_max_ms,
                unclean_leader_election: c.unclean_leader_election,
                cleanup_policy: crate::storage::CleanupPolicy::Delete,
            }
        }
    }

    impl From<ClusterState> for Current {
        fn from(old: ClusterState) -> Current {
            Current {
                version: old.version,
                brokers: super::v4::brokers(old.brokers),
                topics: old
                    .topics
                    .into_iter()
                    .map(|(name, t)| {
                        let topic = CurrentTopic {
                            name: t.name,
                            id: t.id,
                            replication_factor: t.replication_factor,
                            config: t.config.into(),
                            partitions: t.partitions,
                        };
                        (name, topic)
                    })
                    .collect(),
                coordinators: old.coordinators,
                next_topic_id: old.next_topic_id,
                next_producer_id: old.next_producer_id,
            }
        }
    }
}

/// Schema 4: before each broker's Kafka addresses (`Broker::kafka_addresses`).
pub mod v4 {
    use std::collections::BTreeMap;

    use crate::metadata::types::{
        Broker as CurrentBroker, BrokerState, ClusterState as Current, NodeId, ReplicaPlacement,
        Topic,
    };

    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct Broker {
        pub id: NodeId,
        pub address: String,
        pub metadata_address: String,
        pub shards: u32,
        pub shard_addresses: Vec<String>,
        pub state: BrokerState,
    }

    impl From<Broker> for CurrentBroker {
        fn from(old: Broker) -> CurrentBroker {
            CurrentBroker {
                id: old.id,
                address: old.address,
                metadata_address: old.metadata_address,
                shards: old.shards,
                shard_addresses: old.shard_addresses,
                state: old.state,
                kafka_addresses: Vec::new(),
            }
        }
    }

    /// The brokers of an older schema as current ones (no Kafka addresses until they
    /// register again).
    pub fn brokers(old: BTreeMap<NodeId, Broker>) -> BTreeMap<NodeId, CurrentBroker> {
        old.into_iter().map(|(id, b)| (id, b.into())).collect()
    }

    #[derive(
        Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
    )]
    pub struct ClusterState {
        pub version: u64,
        pub brokers: BTreeMap<NodeId, Broker>,
        pub topics: BTreeMap<String, Topic>,
        pub coordinators: BTreeMap<String, ReplicaPlacement>,
        pub next_topic_id: u64,
        pub next_producer_id: u64,
    }

    impl From<ClusterState> for Current {
        fn from(old: ClusterState) -> Current {
            Current {
                version: old.version,
                brokers: brokers(old.brokers),
                topics: old.topics,
                coordinators: old.coordinators,
                next_topic_id: old.next_topic_id,
                next_producer_id: old.next_producer_id,
            }
        }
    }
}
