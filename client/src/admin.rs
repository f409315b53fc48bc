//! Administrative operations: creating and deleting topics, reading partition offsets, and
//! describing the cluster, its topics' configuration and its brokers' logs.

use std::sync::Arc;

use sluice_protocol::native::{
    AlterConfigsRequest, ApiKey, ConfigEntry, DescribeConfigsRequest, DescribeConfigsResponse,
    DescribeLogsRequest, DescribeLogsResponse, ErrorCode, MetadataRequest, MetadataResponse,
    OffsetQuery, TopicResponse,
};

use crate::cluster::Cluster;
use crate::config::ClientConfig;
use crate::consumer::{Seek, TopicPartition};
use crate::error::{Error, Result};

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
