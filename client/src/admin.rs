//! Administrative operations: creating and deleting topics, growing them, moving partitions and
//! their leadership, reading partition offsets.

use std::sync::Arc;

use sluice_protocol::native::{
    ApiKey, ElectPreferredLeaderRequest, ErrorCode, OffsetQuery, ReassignPartitionRequest,
};

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
}

impl Admin {
    pub fn new(config: ClientConfig) -> Result<Admin> {
        Ok(Admin {
            cluster: Cluster::new(config)?,
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
            .create_topic(name, partitions, replication_factor)
            .await
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
}
