//! Administrative operations: creating and deleting topics, reading partition offsets.

use std::sync::Arc;

use sluice_protocol::native::{ErrorCode, OffsetQuery};

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
            .create_topic(name, partitions, replication_factor)
            .await
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
