//! Administrative operations: creating, growing and deleting topics, moving partitions and
//! their leadership, reading partition offsets, describing the cluster, its topics'
//! configuration and its brokers' logs; listing, describing and deleting consumer groups and
//! resetting their offsets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sluice_protocol::group_api::{
    DeleteGroupRequest, DeleteGroupResponse, DescribeGroupRequest, DescribeGroupResponse,
    ListGroupsRequest, ListGroupsResponse, OffsetCommitPartition, OffsetCommitRequest,
    OffsetCommitResponse, NO_MEMBER_EPOCH,
};
use sluice_protocol::native::{
    AlterConfigsRequest, ApiKey, ConfigEntry, DescribeConfigsRequest, DescribeConfigsResponse,
    DescribeLatencyRequest, DescribeLatencyResponse, DescribeLogsRequest, DescribeLogsResponse,
    ElectPreferredLeaderRequest, ErrorCode, MetadataRequest, MetadataResponse, OffsetQuery,
    ReassignPartitionRequest, TopicResponse,
};

use crate::group::{coordinator_call, Shared};

use crate::cluster::Cluster;
use crate::config::ClientConfig;
use crate::consumer::{Seek, TopicPartition};
use crate::error::{Error, Result};

/// One partition's replication state, from [`Admin::partitions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub partition: u32,
    /// `None` while no in-sync replica is alive.
    pub leader: Option<u64>,
    pub leader_epoch: u32,
    /// Brokers holding a replica, the preferred leader first (during a reassignment: the old
    /// set followed by the replicas being added).
    pub replicas: Vec<u64>,
    pub in_sync: Vec<u64>,
}

/// Topic management and offset lookups.
///
/// ```no_run
/// # async fn example() -> Result<(), sluice_client::Error> {
/// use sluice_client::{Admin, ClientConfig};
///
/// let admin = Admin::new(ClientConfig::new(["127.0.0.1:9490"]))?;
/// admin.create_topic("orders", 12, 1).await?;
/// assert_eq!(admin.partition_count("orders").await?, 12);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Admin {
    cluster: Arc<Cluster>,
    /// Each group's coordinator, once found.
    coordinators: Arc<Mutex<HashMap<String, Arc<Mutex<Shared>>>>>,
}

impl Admin {
    pub fn new(config: ClientConfig) -> Result<Admin> {
        Ok(Admin {
            cluster: Cluster::new(config)?,
            coordinators: Arc::default(),
        })
    }

    /// Creates a topic and returns once every partition has a leader.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
    ) -> Result<()> {
        self.cluster
            .create_topic(name, partitions, replication_factor, &[])
            .await
    }

    /// Creates a topic with configuration overrides (`("retention.ms", "-1")`, …; the keys are
    /// listed in `docs/protocol.md`) and returns once every partition has a leader. An unknown
    /// key or a bad value is an [`Error::Broker`] with [`ErrorCode::InvalidConfig`].
    pub async fn create_topic_with_config(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: &[(String, String)],
    ) -> Result<()> {
        self.cluster
            .create_topic(name, partitions, replication_factor, configs)
            .await
    }

    /// Changes settings of a running topic (`("retention.ms", "3600000")`, …; only those that
    /// take effect on open logs: retention, `min.insync.replicas`, `replica.lag.time.max.ms`,
    /// `unclean.leader.election.enable`). Returns once the answering broker has applied it.
    pub async fn alter_topic_config(
        &self,
        topic: &str,
        configs: &[(String, String)],
    ) -> Result<()> {
        let request = AlterConfigsRequest {
            topic: topic.to_owned(),
            configs: configs
                .iter()
                .map(|(key, value)| ConfigEntry {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
        };
        let response: TopicResponse = self
            .cluster
            .admin_call(ApiKey::AlterConfigs, &request)
            .await?;
        match response.error {
            ErrorCode::None => Ok(()),
            ErrorCode::UnknownTopicOrPartition => Err(Error::UnknownTopic {
                topic: topic.to_owned(),
            }),
            code => Err(Error::broker(
                code,
                format!("alter config of {topic:?}: {}", response.message),
            )),
        }
    }

    /// The cluster's metadata as one broker has it: brokers, the controller, the metadata
    /// version, and the topics named (all when `None`) with their partitions' leaders, replicas
    /// and in-sync sets.
    pub async fn describe_cluster(&self, topics: Option<&[String]>) -> Result<MetadataResponse> {
        let request = MetadataRequest {
            topics: topics.map(<[String]>::to_vec),
        };
        self.cluster.admin_call(ApiKey::Metadata, &request).await
    }

    /// The partition logs one shard holds (`address`: a shard address from
    /// [`Admin::describe_cluster`]), of `topics` (all when empty).
    pub async fn describe_logs(
        &self,
        address: &str,
        topics: &[String],
    ) -> Result<DescribeLogsResponse> {
        let connection = self.cluster.connection(address).await?;
        let request = DescribeLogsRequest {
            topics: topics.to_vec(),
        };
        connection
            .call(
                ApiKey::DescribeLogs,
                &request,
                self.cluster.config.request_timeout,
            )
            .await
    }

    /// One shard's own latency distributions since it started (`address`: a shard address from
    /// [`Admin::describe_cluster`]): its produce requests, frame in to response out, and its
    /// flushes' device time, as hdrhistogram buckets in µs.
    pub async fn describe_latency(&self, address: &str) -> Result<DescribeLatencyResponse> {
        let connection = self.cluster.connection(address).await?;
        connection
            .call(
                ApiKey::DescribeLatency,
                &DescribeLatencyRequest {},
                self.cluster.config.request_timeout,
            )
            .await
    }

    /// A topic's configuration, `(key, value)` sorted by key; [`Error::UnknownTopic`] if there
    /// is no such topic.
    pub async fn describe_configs(&self, topic: &str) -> Result<Vec<(String, String)>> {
        let request = DescribeConfigsRequest {
            topic: topic.to_owned(),
        };
        let response: DescribeConfigsResponse = self
            .cluster
            .admin_call(ApiKey::DescribeConfigs, &request)
            .await?;
        match response.error {
            ErrorCode::None => Ok(response
                .configs
                .into_iter()
                .map(|c| (c.key, c.value))
                .collect()),
            ErrorCode::UnknownTopicOrPartition => Err(Error::UnknownTopic {
                topic: topic.to_owned(),
            }),
            code => Err(Error::broker(
                code,
                format!("describe configs of {topic:?}"),
            )),
        }
    }

    /// Deletes a topic and returns once the metadata no longer lists it.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.cluster.delete_topic(name).await
    }

    /// Grows a topic to `count` partitions (more than it has) and returns once every partition
    /// has a leader. Records keyed before and after land on different partitions.
    pub async fn add_partitions(&self, topic: &str, count: u32) -> Result<()> {
        self.cluster.add_partitions(topic, count).await
    }

    /// Moves a partition's leadership to its preferred replica (the first of its replicas),
    /// which must be alive and in sync (else `PreferredLeaderNotAvailable`); nothing happens
    /// when it leads already.
    pub async fn elect_preferred_leader(&self, topic: &str, partition: u32) -> Result<()> {
        let request = ElectPreferredLeaderRequest {
            topic: topic.to_owned(),
            partition,
        };
        self.cluster
            .partition_admin(
                ApiKey::ElectPreferredLeader,
                &request,
                &format!("elect the preferred leader of {topic}/{partition}"),
            )
            .await
    }

    /// Starts moving a partition to the replicas on `brokers` (the first becomes its preferred
    /// leader). The added replicas catch up as followers; once all are in sync the old ones
    /// are dropped. Returns when the move has started: watch [`Admin::partitions`] for its end
    /// (the replicas are then exactly `brokers`).
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: u32,
        brokers: &[u64],
    ) -> Result<()> {
        let request = ReassignPartitionRequest {
            topic: topic.to_owned(),
            partition,
            brokers: brokers.to_vec(),
        };
        self.cluster
            .partition_admin(
                ApiKey::ReassignPartition,
                &request,
                &format!("reassign {topic}/{partition}"),
            )
            .await
    }

    /// Each partition of a topic as the metadata has it: leader, leader epoch, replicas and
    /// in-sync set.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<PartitionState>> {
        let mut partitions: Vec<PartitionState> = self
            .cluster
            .describe_topic(topic)
            .await?
            .partitions
            .into_iter()
            .map(|p| PartitionState {
                partition: p.partition,
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                replicas: p.replicas,
                in_sync: p.in_sync,
            })
            .collect();
        partitions.sort_by_key(|p| p.partition);
        Ok(partitions)
    }

    /// The topic's partition count; [`Error::UnknownTopic`] if there is no such topic.
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        self.cluster.refresh(Some(&[topic.to_owned()])).await?;
        self.cluster.partition_count(topic).await
    }

    /// The offset a [`Seek`] names: earliest, latest (the high watermark), the first at or after
    /// a timestamp (`None` if no record is that recent), or the offset given.
    pub async fn offset(&self, tp: &TopicPartition, at: Seek) -> Result<Option<u64>> {
        let query = match at {
            Seek::Earliest => OffsetQuery::Earliest,
            Seek::Latest => OffsetQuery::Latest,
            Seek::Timestamp(ts) => OffsetQuery::Timestamp(ts),
            Seek::Offset(o) => return Ok(Some(o)),
        };
        match self
            .cluster
            .list_offset(&tp.topic, tp.partition, query)
            .await
        {
            Err(Error::Broker {
                code: ErrorCode::OffsetOutOfRange,
                ..
            }) => Ok(None),
            other => other,
        }
    }

    /// Every consumer group of the cluster, with its state and member count (asked of every
    /// shard, since each coordinates its own groups).
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        self.cluster.refresh(None).await?;
        let mut groups = Vec::new();
        for address in self.cluster.shard_addresses() {
            let connection = self.cluster.connection(&address).await?;
            let response: ListGroupsResponse = connection
                .call(
                    ApiKey::ListGroups,
                    &ListGroupsRequest {},
                    self.cluster.config.request_timeout,
                )
                .await?;
            if response.error != ErrorCode::None {
                return Err(Error::broker(
                    response.error,
                    format!("list groups on {address}"),
                ));
            }
            groups.extend(response.groups.into_iter().map(|g| GroupListing {
                group: g.group,
                state: g.state,
                members: g.members,
                group_type: g.group_type,
            }));
        }
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(groups)
    }

    /// A group's state, members with their assignments, and committed offsets with their lag
    /// (the partition's high watermark minus the committed offset).
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let response: DescribeGroupResponse = self
            .group_call(
                group,
                ApiKey::DescribeGroup,
                &DescribeGroupRequest {
                    group: group.to_string(),
                },
            )
            .await?;
        let mut offsets = Vec::with_capacity(response.offsets.len());
        for c in response.offsets {
            let tp = TopicPartition::new(c.topic, c.partition);
            let end = self.offset(&tp, Seek::Latest).await.ok().flatten();
            let committed = c.offset.unwrap_or(0);
            offsets.push(GroupOffset {
                lag: end.map(|end| end.saturating_sub(committed)),
                tp,
                committed,
                high_watermark: end,
            });
        }
        Ok(GroupDescription {
            group: response.group,
            state: response.state,
            group_epoch: response.group_epoch,
            assignor: response.assignor,
            members: response
                .members
                .into_iter()
                .map(|m| GroupMember {
                    member_id: m.member_id,
                    instance_id: m.instance_id,
                    member_epoch: m.member_epoch,
                    assignment: m
                        .assignment
                        .into_iter()
                        .map(|p| TopicPartition::new(p.topic, p.partition))
                        .collect(),
                })
                .collect(),
            offsets,
        })
    }

    /// Deletes a group that has no members, with its committed offsets.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let _: DeleteGroupResponse = self
            .group_call(
                group,
                ApiKey::DeleteGroup,
                &DeleteGroupRequest {
                    group: group.to_string(),
                },
            )
            .await?;
        Ok(())
    }

    /// Sets a group's committed offsets (a reset to earliest, latest, a time or given offsets:
    /// resolve them with [`Admin::offset`]). Refused with `NonEmptyGroup` while the group has
    /// members.
    pub async fn reset_offsets(
        &self,
        group: &str,
        offsets: &[(TopicPartition, u64)],
    ) -> Result<()> {
        let request = OffsetCommitRequest {
            group: group.to_string(),
            member_id: None,
            member_epoch: NO_MEMBER_EPOCH,
            partitions: offsets
                .iter()
                .map(|(tp, offset)| OffsetCommitPartition {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset: *offset,
                    metadata: String::new(),
                })
                .collect(),
        };
        let response: OffsetCommitResponse = self
            .group_call(group, ApiKey::OffsetCommit, &request)
            .await?;
        match response
            .partitions
            .iter()
            .find(|p| p.error != ErrorCode::None)
        {
            None => Ok(()),
            Some(p) => Err(Error::broker(
                p.error,
                format!("reset of {}/{} in group {group:?}", p.topic, p.partition),
            )),
        }
    }

    /// A request to the group's coordinator, retried while the coordinator moves or loads.
    async fn group_call<Req, Resp>(&self, group: &str, api: ApiKey, request: &Req) -> Result<Resp>
    where
        Req: sluice_protocol::native::EncodeControl,
        Resp: sluice_protocol::native::DecodeControl + crate::group::CoordinatorReply,
    {
        let shared = Arc::clone(
            self.coordinators
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(group.to_string())
                .or_default(),
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error =
                match coordinator_call::<Req, Resp>(&self.cluster, &shared, group, api, request)
                    .await
                {
                    Ok(response) if response.error_code() == ErrorCode::None => {
                        return Ok(response)
                    }
                    Ok(response) => {
                        Error::broker(response.error_code(), format!("{api:?} of group {group:?}"))
                    }
                    Err(error) => error,
                };
            if !error.is_retriable() || attempt >= 10 {
                return Err(error);
            }
            tokio::time::sleep(self.cluster.config.backoff(attempt)).await;
        }
    }
}

/// One group as [`Admin::list_groups`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group: String,
    /// `Empty`, `Assigning` (members moving toward their target assignment) or `Stable`; a
    /// classic group's `PreparingRebalance`, `CompletingRebalance`, `Stable` or `Empty`.
    pub state: String,
    pub members: u32,
    /// `consumer` (this client's protocol, KIP-848) or `classic` (Kafka clients' JoinGroup).
    pub group_type: String,
}

/// What [`Admin::describe_group`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group: String,
    pub state: String,
    pub group_epoch: u32,
    pub assignor: String,
    pub members: Vec<GroupMember>,
    pub offsets: Vec<GroupOffset>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub member_epoch: u32,
    pub assignment: Vec<TopicPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffset {
    pub tp: TopicPartition,
    pub committed: u64,
    /// `None` when the partition's leader could not be asked.
    pub high_watermark: Option<u64>,
    pub lag: Option<u64>,
}
