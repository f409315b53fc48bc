//! What the client knows of the cluster: a metadata snapshot and a pool of connections.
//!
//! The snapshot (brokers, topics, partition leaders and owning shards) is replaced whole on each
//! refresh, so readers never see half an update. Refreshes happen on first use of a topic, when
//! the snapshot is older than `metadata_max_age`, and when a request fails in a way that says the
//! snapshot is stale ("not leader", "unknown partition", a broken connection). Connections are
//! shared by address: one per broker shard, multiplexing every producer and consumer of this
//! client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use sluice_protocol::native::{
    ApiKey, ConfigEntry, CreateTopicRequest, CreateTopicWithConfigRequest, DeleteTopicRequest,
    ErrorCode, ListOffsetsPartition, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, OffsetQuery, TopicResponse,
};

use crate::config::ClientConfig;
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::limits::METADATA_ADDRESSES_TRIED_MAX;

/// One partition as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionInfo {
    pub leader: Option<u64>,
    pub shard: u32,
}

/// One topic: its partitions, indexed by partition number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicInfo {
    pub partitions: Vec<PartitionInfo>,
}

#[derive(Debug)]
struct Broker {
    address: String,
    shard_addresses: Vec<String>,
}

#[derive(Debug)]
struct Snapshot {
    brokers: HashMap<u64, Broker>,
    topics: HashMap<String, Arc<TopicInfo>>,
    fetched: Instant,
}

/// One metadata snapshot, to route many partitions with ([`Cluster::routes`]).
pub(crate) struct Routes {
    snapshot: Arc<Snapshot>,
    shard_aware: bool,
}

impl Routes {
    /// As [`Cluster::address_of`], borrowed from the snapshot.
    pub(crate) fn address_of(&self, topic: &str, partition: u32) -> Option<&str> {
        let info = self
            .snapshot
            .topics
            .get(topic)?
            .partitions
            .get(partition as usize)?;
        let broker = self.snapshot.brokers.get(&info.leader?)?;
        if self.shard_aware {
            if let Some(a) = broker.shard_addresses.get(info.shard as usize) {
                return Some(a);
            }
        }
        Some(&broker.address)
    }
}

/// The cluster as seen by one client; shared by its producers, consumers and admin calls.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub config: ClientConfig,
    snapshot: RwLock<Arc<Snapshot>>,
    connections: Mutex<HashMap<String, Arc<Connection>>>,
    /// Serializes connection set-up per client so that concurrent callers share one connection.
    connecting: tokio::sync::Mutex<()>,
    /// Serializes metadata refreshes: callers that waited behind one reuse its result.
    refreshing: tokio::sync::Mutex<()>,
}

impl Cluster {
    pub(crate) fn new(config: ClientConfig) -> Result<Arc<Cluster>> {
        config.validate()?;
        Ok(Arc::new(Cluster {
            config,
            snapshot: RwLock::new(Arc::new(Snapshot {
                brokers: HashMap::new(),
                topics: HashMap::new(),
                fetched: Instant::now() - std::time::Duration::from_secs(3600 * 24),
            })),
            connections: Mutex::new(HashMap::new()),
            connecting: tokio::sync::Mutex::new(()),
            refreshing: tokio::sync::Mutex::new(()),
        }))
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// A connection to `address`, reusing a live one.
    pub(crate) async fn connection(&self, address: &str) -> Result<Arc<Connection>> {
        if let Some(c) = self.cached_connection(address) {
            return Ok(c);
        }
        let _guard = self.connecting.lock().await;
        if let Some(c) = self.cached_connection(address) {
            return Ok(c);
        }
        let config = &self.config;
        let connection = Arc::new(
            Connection::open(
                address,
                &config.client_id,
                config.in_flight_max,
                config.connect_timeout,
            )
            .await?,
        );
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address.to_owned(), Arc::clone(&connection));
        Ok(connection)
    }

    fn cached_connection(&self, address: &str) -> Option<Arc<Connection>> {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        match connections.get(address) {
            Some(c) if !c.is_closed() => Some(Arc::clone(c)),
            Some(_) => {
                connections.remove(address);
                None
            }
            None => None,
        }
    }

    /// Every shard address of every broker the last metadata listed.
    pub(crate) fn shard_addresses(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .snapshot()
            .brokers
            .values()
            .flat_map(|b| b.shard_addresses.iter().cloned())
            .collect();
        all.sort();
        all
    }

    /// A connection to any broker: known brokers first, then the bootstrap list.
    pub(crate) async fn any_connection(&self) -> Result<Arc<Connection>> {
        let snapshot = self.snapshot();
        let mut addresses: Vec<String> = snapshot
            .brokers
            .values()
            .map(|b| b.address.clone())
            .collect();
        addresses.sort();
        for a in &self.config.bootstrap {
            if !addresses.contains(a) {
                addresses.push(a.clone());
            }
        }
        let mut last = String::from("no address");
        for address in addresses.iter().take(METADATA_ADDRESSES_TRIED_MAX) {
            match self.connection(address).await {
                Ok(c) => return Ok(c),
                Err(e) => last = e.to_string(),
            }
        }
        Err(Error::NoBrokerReachable {
            tried: addresses.join(", "),
            last,
        })
    }

    /// Fetches fresh metadata for all topics (or `topics`) and installs it.
    pub(crate) async fn refresh(&self, topics: Option<&[String]>) -> Result<()> {
        let before = self.snapshot().fetched;
        let _guard = self.refreshing.lock().await;
        if self.snapshot().fetched > before && topics.is_none() {
            return Ok(()); // Someone refreshed everything while we waited.
        }
        let request = MetadataRequest {
            topics: topics.map(<[String]>::to_vec),
        };
        let timeout = self.config.request_timeout;
        let mut attempt = 0;
        let response: MetadataResponse = loop {
            attempt += 1;
            let result = match self.any_connection().await {
                Ok(connection) => connection.call(ApiKey::Metadata, &request, timeout).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(r) => break r,
                Err(e) if e.is_retriable() && attempt < 3 => {
                    tracing::debug!(error = %e, "metadata refresh failed; retrying");
                    tokio::time::sleep(self.config.backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.install(response, topics);
        Ok(())
    }

    fn install(&self, response: MetadataResponse, asked: Option<&[String]>) {
        let old = self.snapshot();
        let now = Instant::now();
        let brokers = response
            .brokers
            .into_iter()
            .map(|b| {
                (
                    b.id,
                    Broker {
                        address: b.address,
                        shard_addresses: b.shard_addresses,
                    },
                )
            })
            .collect();
        // A refresh for some topics keeps what is known of the others.
        let mut topics = if asked.is_some() {
            old.topics.clone()
        } else {
            HashMap::new()
        };
        let response_names: Vec<String> = response.topics.iter().map(|t| t.name.clone()).collect();
        for t in response.topics {
            if t.error != ErrorCode::None || t.partitions.is_empty() {
                topics.remove(&t.name);
                continue;
            }
            let mut partitions = t.partitions;
            partitions.sort_by_key(|p| p.partition);
            let info = TopicInfo {
                partitions: partitions
                    .into_iter()
                    .map(|p| PartitionInfo {
                        leader: p.leader,
                        shard: p.shard,
                    })
                    .collect(),
            };
            topics.insert(t.name, Arc::new(info));
        }
        if let Some(asked) = asked {
            for name in asked {
                if !response_names.contains(name) {
                    topics.remove(name);
                }
            }
        }
        let snapshot = Snapshot {
            brokers,
            topics,
            fetched: now,
        };
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
    }

    /// The topic's metadata, refreshing once if it is unknown or the snapshot is old.
    pub(crate) async fn topic(&self, name: &str) -> Result<Arc<TopicInfo>> {
        let snapshot = self.snapshot();
        let fresh = snapshot.fetched.elapsed() < self.config.metadata_max_age;
        if fresh {
            if let Some(t) = snapshot.topics.get(name) {
                return Ok(Arc::clone(t));
            }
        }
        let deadline = Instant::now() + self.config.metadata_wait_max;
        let mut attempt = 0;
        loop {
            self.refresh(Some(&[name.to_owned()])).await?;
            if let Some(t) = self.snapshot().topics.get(name) {
                return Ok(Arc::clone(t));
            }
            attempt += 1;
            let pause = self.config.backoff(attempt);
            if Instant::now() + pause > deadline {
                return Err(Error::UnknownTopic {
                    topic: name.to_owned(),
                });
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// The topic's metadata if the snapshot has it, without any I/O.
    pub(crate) fn cached_topic(&self, name: &str) -> Option<Arc<TopicInfo>> {
        self.snapshot().topics.get(name).cloned()
    }

    /// The address serving `topic`/`partition`: the owning shard's own address when the broker
    /// publishes one and the client is shard-aware, else the leader's main address.
    pub(crate) fn address_of(&self, topic: &str, partition: u32) -> Option<String> {
        self.routes()
            .address_of(topic, partition)
            .map(str::to_owned)
    }

    /// The metadata as it is now, for looking up many partitions' addresses without a lock or
    /// an allocation each.
    pub(crate) fn routes(&self) -> Routes {
        Routes {
            snapshot: self.snapshot(),
            shard_aware: self.config.shard_aware,
        }
    }

    /// Creates a topic (with configuration overrides when `configs` is not empty) and waits until
    /// every partition has a leader in the metadata.
    pub(crate) async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: &[(String, String)],
    ) -> Result<()> {
        let response: TopicResponse = if configs.is_empty() {
            let request = CreateTopicRequest {
                name: name.to_owned(),
                partitions,
                replication_factor,
            };
            self.admin_call(ApiKey::CreateTopic, &request).await?
        } else {
            let request = CreateTopicWithConfigRequest {
                name: name.to_owned(),
                partitions,
                replication_factor,
                configs: configs
                    .iter()
                    .map(|(key, value)| ConfigEntry {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect(),
            };
            self.admin_call(ApiKey::CreateTopicWithConfig, &request)
                .await?
        };
        if response.error != ErrorCode::None {
            return Err(Error::broker(
                response.error,
                format!("create topic {name:?}: {}", response.message),
            ));
        }
        self.wait_for(name, |t| {
            t.is_some_and(|t| {
                t.partitions.len() == partitions as usize
                    && t.partitions.iter().all(|p| p.leader.is_some())
            })
        })
        .await
    }

    /// Grows a topic to `count` partitions and waits until every one has a leader.
    pub(crate) async fn add_partitions(&self, name: &str, count: u32) -> Result<()> {
        let request = sluice_protocol::native::AddPartitionsRequest {
            topic: name.to_owned(),
            count,
        };
        self.partition_admin(
            ApiKey::AddPartitions,
            &request,
            &format!("add partitions to {name:?}"),
        )
        .await?;
        self.wait_for(name, |t| {
            t.is_some_and(|t| {
                t.partitions.len() == count as usize
                    && t.partitions.iter().all(|p| p.leader.is_some())
            })
        })
        .await
    }

    /// Deletes a topic and waits until the metadata no longer has it.
    pub(crate) async fn delete_topic(&self, name: &str) -> Result<()> {
        let request = DeleteTopicRequest {
            name: name.to_owned(),
        };
        let response: TopicResponse = self.admin_call(ApiKey::DeleteTopic, &request).await?;
        if response.error != ErrorCode::None {
            return Err(Error::broker(
                response.error,
                format!("delete topic {name:?}: {}", response.message),
            ));
        }
        self.wait_for(name, |t| t.is_none()).await
    }

    /// A partition admin request (AddPartitions, ElectPreferredLeader, ReassignPartition),
    /// answered once the broker asked has applied it.
    pub(crate) async fn partition_admin<Req: sluice_protocol::native::EncodeControl>(
        &self,
        api: ApiKey,
        request: &Req,
        what: &str,
    ) -> Result<()> {
        let response: TopicResponse = self.admin_call(api, request).await?;
        if response.error != ErrorCode::None {
            return Err(Error::broker(
                response.error,
                format!("{what}: {}", response.message),
            ));
        }
        Ok(())
    }

    /// The topic as a broker's metadata has it: leaders, replicas and in-sync sets.
    pub(crate) async fn describe_topic(
        &self,
        name: &str,
    ) -> Result<sluice_protocol::native::TopicMetadata> {
        let request = sluice_protocol::native::MetadataRequest {
            topics: Some(vec![name.to_owned()]),
        };
        let response: sluice_protocol::native::MetadataResponse =
            self.admin_call(ApiKey::Metadata, &request).await?;
        match response.topics.into_iter().find(|t| t.name == name) {
            Some(t) if t.error == ErrorCode::None => Ok(t),
            _ => Err(Error::UnknownTopic {
                topic: name.to_owned(),
            }),
        }
    }

    async fn wait_for(&self, name: &str, done: impl Fn(Option<&TopicInfo>) -> bool) -> Result<()> {
        let deadline = Instant::now() + self.config.request_timeout;
        let mut attempt = 0;
        loop {
            self.refresh(Some(&[name.to_owned()])).await?;
            if done(self.snapshot().topics.get(name).map(|t| t.as_ref())) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    address: "metadata".into(),
                    after: self.config.request_timeout,
                });
            }
            attempt += 1;
            tokio::time::sleep(
                self.config
                    .backoff(attempt)
                    .min(std::time::Duration::from_millis(50)),
            )
            .await;
        }
    }

    /// An admin request to any broker, retried on another when the one asked cannot serve it.
    pub(crate) async fn admin_call<Req, Resp>(&self, api: ApiKey, request: &Req) -> Result<Resp>
    where
        Req: sluice_protocol::native::EncodeControl,
        Resp: sluice_protocol::native::DecodeControl,
    {
        let connection = self.any_connection().await?;
        connection
            .call(api, request, self.config.request_timeout)
            .await
    }

    /// Asks the partition's leader for an offset (earliest, latest, at a timestamp).
    pub(crate) async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        query: OffsetQuery,
    ) -> Result<Option<u64>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.list_offset_once(topic, partition, query).await;
            match result {
                Err(e) if e.is_retriable() && attempt < 10 => {
                    tracing::debug!(error = %e, topic, partition, "list offsets; retrying");
                    tokio::time::sleep(self.config.backoff(attempt)).await;
                    self.refresh(Some(&[topic.to_owned()])).await?;
                }
                other => return other,
            }
        }
    }

    async fn list_offset_once(
        &self,
        topic: &str,
        partition: u32,
        query: OffsetQuery,
    ) -> Result<Option<u64>> {
        let info = self.topic(topic).await?;
        if partition as usize >= info.partitions.len() {
            return Err(Error::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions: info.partitions.len() as u32,
            });
        }
        let address = self.address_of(topic, partition).ok_or(Error::broker(
            ErrorCode::NotLeaderOrWrongShard,
            format!("{topic}/{partition} has no leader"),
        ))?;
        let connection = self.connection(&address).await?;
        let request = ListOffsetsRequest {
            partitions: vec![ListOffsetsPartition {
                topic: topic.to_owned(),
                partition,
                query,
            }],
        };
        let response: ListOffsetsResponse = connection
            .call(ApiKey::ListOffsets, &request, self.config.request_timeout)
            .await?;
        let p = response
            .partitions
            .into_iter()
            .next()
            .ok_or_else(|| Error::Protocol {
                address: address.clone(),
                reason: "list offsets response without the partition".into(),
            })?;
        if p.error != ErrorCode::None {
            return Err(Error::broker(
                p.error,
                format!("list offsets of {topic}/{partition}"),
            ));
        }
        Ok(p.offset)
    }

    /// Partition count of a topic, from metadata.
    pub(crate) async fn partition_count(&self, topic: &str) -> Result<u32> {
        Ok(self.topic(topic).await?.partitions.len() as u32)
    }
}
