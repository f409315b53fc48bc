//! A broker's metadata node: the Raft member, the metadata port's server, the controller duties
//! when this node leads, and the broker's own registration and heartbeats.
//!
//! Everything here runs on one dedicated thread with a current-thread tokio runtime (see
//! `ARCHITECTURE.md` for why). The rest of the broker sees the metadata only through the watch
//! channel of versioned [`ClusterState`] snapshots.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::client::AdminClient;
use super::network::{Network, Refusals};
use super::store::{LogStore, StateMachineStore};
use super::types::{
    BrokerState, ClusterState, Command, CommandResult, MetadataError, NodeId, Raft,
};
use super::wire::{
    read_frame, write_frame, AdminReply, AdminRequest, ClusterView, WireError, WireRequest,
    WireResponse,
};
use crate::limits::{
    CONTROLLED_SHUTDOWN_RETRY, CONTROLLER_TICK_MAX, METADATA_CONNECTIONS_MAX, REFUSED_DEAD_AFTER,
};

/// How a metadata node is set up.
#[derive(Debug, Clone)]
pub struct MetadataConfig {
    pub node_id: NodeId,
    /// `<data-dir>/metadata`.
    pub dir: PathBuf,
    /// Address the metadata port listens on, and that peers use.
    pub listen: String,
    /// The fixed voter set (`--peers`), this node included; empty for a cluster of one.
    pub peers: BTreeMap<NodeId, String>,
    /// Metadata addresses of a running cluster to join (`--join`): the node starts empty and
    /// asks the controller to add it, first as a learner, then as a voter.
    pub join: Vec<String>,
    /// Native-protocol address advertised to clients.
    pub broker_address: String,
    pub shards: u32,
    /// Native-protocol address of each shard.
    pub shard_addresses: Vec<String>,
    /// Kafka-protocol address of each shard (empty: no Kafka listener).
    pub kafka_addresses: Vec<String>,
    /// Time after the controller's last heartbeat by which a follower starts an election.
    pub election_timeout_ms: u64,
    /// How long a broker stays alive without a heartbeat.
    pub lease_ms: u64,
    /// A snapshot is taken every this many log entries; the log is purged behind it.
    pub snapshot_logs: u64,
}

impl MetadataConfig {
    pub fn new(node_id: NodeId, dir: PathBuf, listen: String) -> MetadataConfig {
        MetadataConfig {
            node_id,
            dir,
            broker_address: listen.clone(),
            listen,
            peers: BTreeMap::new(),
            join: Vec::new(),
            shards: 1,
            shard_addresses: Vec::new(),
            kafka_addresses: Vec::new(),
            election_timeout_ms: 600,
            lease_ms: 6_000,
            snapshot_logs: 1_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("metadata storage in {path}: {source}")]
    Storage {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("invalid metadata configuration: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// Last heartbeat per broker, kept by the controller only (not replicated: only state changes
/// go through Raft, as in KRaft).
#[derive(Debug, Default)]
struct Leases {
    last: HashMap<NodeId, Instant>,
}

/// A running metadata node.
#[derive(Debug, Clone)]
pub struct MetadataNode {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    config: MetadataConfig,
    raft: Raft,
    machine: StateMachineStore,
    log: LogStore,
    state: watch::Receiver<Arc<ClusterState>>,
    leases: Mutex<Leases>,
    /// Peers whose metadata port refuses connections, as the Raft network saw.
    refusals: Refusals,
}

impl std::fmt::Debug for NodeInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataNode")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MetadataNode {
    /// Opens storage, starts Raft and the metadata port, and the background duties. Must run
    /// inside a tokio runtime.
    pub async fn start(config: MetadataConfig) -> Result<MetadataNode, NodeError> {
        if !config.peers.is_empty() && !config.peers.contains_key(&config.node_id) {
            return Err(NodeError::Config(format!(
                "--peers does not list this node's id {}",
                config.node_id
            )));
        }
        let storage_error = |source| NodeError::Storage {
            path: config.dir.clone(),
            source,
        };
        let log = LogStore::open(&config.dir).map_err(storage_error)?;
        let (machine, state) = StateMachineStore::open(&config.dir).map_err(storage_error)?;
        let raft_config = Config {
            cluster_name: "sluice".into(),
            // openraft waits a leader lease (= election_timeout_max) plus a randomized election
            // timeout before starting an election; these bounds make that land between 5/6 and
            // all of `election_timeout_ms` after the controller's last heartbeat.
            heartbeat_interval: (config.election_timeout_ms / 9).max(1),
            election_timeout_min: (config.election_timeout_ms / 3).max(3),
            election_timeout_max: (config.election_timeout_ms / 2).max(4),
            install_snapshot_timeout: 5_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
            max_in_snapshot_log_to_keep: (config.snapshot_logs / 10).max(10),
            purge_batch_size: 1,
            ..Config::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| NodeError::Config(e.to_string()))?,
        );
        let listener =
            TcpListener::bind(&config.listen)
                .await
                .map_err(|source| NodeError::Listen {
                    address: config.listen.clone(),
                    source,
                })?;
        let refusals = Refusals::default();
        let raft = Raft::new(
            config.node_id,
            raft_config,
            Network {
                local: config.node_id,
                refusals: refusals.clone(),
            },
            log.clone(),
            machine.clone(),
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let node = MetadataNode {
            inner: Arc::new(NodeInner {
                config,
                raft,
                machine,
                log,
                state,
                leases: Mutex::new(Leases::default()),
                refusals,
            }),
        };
        let initialized = node
            .inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if !initialized && !node.inner.config.join.is_empty() {
            tokio::spawn(join_cluster(node.clone()));
        } else if !initialized {
            let members: BTreeMap<NodeId, BasicNode> = if node.inner.config.peers.is_empty() {
                BTreeMap::from([(node.id(), BasicNode::new(&node.inner.config.listen))])
            } else {
                node.inner
                    .config
                    .peers
                    .iter()
                    .map(|(id, addr)| (*id, BasicNode::new(addr)))
                    .collect()
            };
            // Every member of a fixed voter set initializes with the same membership: whichever
            // wins the first election, the logs agree.
            if let Err(error) = node.inner.raft.initialize(members).await {
                tracing::debug!(%error, "raft initialize");
            }
        }
        tokio::spawn(serve(node.clone(), listener));
        tokio::spawn(controller_duties(node.clone()));
        tokio::spawn(register_and_heartbeat(node.clone()));
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.inner.config.node_id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Versioned metadata as applied on this node.
    pub fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.inner.state.clone()
    }

    /// Entries in the Raft log (bounded by snapshots).
    pub fn log_entries(&self) -> usize {
        self.inner.log.len()
    }

    pub async fn shutdown(&self) {
        if let Err(error) = self.inner.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
    }

    /// Controlled shutdown, run on SIGTERM before the shards stop: asks the controller to move
    /// this broker's leaderships to other in-sync replicas and waits until the metadata shows it
    /// leads no partition that another live replica could take, at most `wait`; then returns
    /// anyway (the leases move what is left when this broker has stopped).
    pub async fn controlled_shutdown(&self, wait: Duration) {
        let id = self.id();
        let deadline = Instant::now() + wait;
        let client = AdminClient::new(self.bootstrap()).with_timeout(CONTROLLED_SHUTDOWN_RETRY * 4);
        let mut applied = self.state();
        loop {
            let state = applied.borrow_and_update().clone();
            let (led, movable) = state.led_by(id);
            if movable == 0 {
                tracing::info!(
                    broker = id,
                    still_leading = led,
                    "controlled shutdown: no leadership left to move"
                );
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    broker = id,
                    still_leading = led,
                    movable,
                    waited_ms = wait.as_millis() as u64,
                    "controlled shutdown: leaderships did not move in time; stopping anyway"
                );
                return;
            }
            if let Err(error) = client
                .request(AdminRequest::ControlledShutdown { id })
                .await
            {
                tracing::debug!(%error, "controlled shutdown request");
            }
            // The next look after the metadata changes, or after a pause (followers may catch
            // up and join an in-sync set, the controller may move).
            let pause = CONTROLLED_SHUTDOWN_RETRY.min(deadline.saturating_duration_since(now));
            let _ = tokio::time::timeout(pause, applied.changed()).await;
        }
    }

    /// Metadata addresses to reach the controller through: this node first, then its peers.
    fn bootstrap(&self) -> Vec<String> {
        let config = &self.inner.config;
        let mut bootstrap: Vec<String> = vec![config.listen.clone()];
        bootstrap.extend(
            config
                .peers
                .values()
                .chain(&config.join)
                .filter(|a| **a != config.listen)
                .cloned(),
        );
        bootstrap
    }

    fn controller(&self) -> Option<(NodeId, String)> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let address = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Some((leader, address))
    }

    fn require_controller(&self) -> Result<(), MetadataError> {
        match self.controller() {
            Some((leader, _)) if leader == self.id() => Ok(()),
            other => Err(MetadataError::NotController { controller: other }),
        }
    }

    fn view(&self) -> ClusterView {
        let metrics = self.inner.raft.metrics().borrow().clone();
        ClusterView {
            node_id: self.id(),
            controller: metrics.current_leader,
            term: metrics.current_term,
            last_applied_index: metrics.last_applied.map(|l| l.index),
            voters: metrics.membership_config.membership().voter_ids().collect(),
            log_entries: self.inner.log.len() as u64,
            snapshot_index: metrics.snapshot.map(|l| l.index),
            state: (*self.inner.machine.state()).clone(),
        }
    }

    async fn propose(&self, command: Command) -> Result<AdminReply, MetadataError> {
        match self.inner.raft.client_write(command).await {
            Ok(response) => match response.data {
                CommandResult::Applied { version } => Ok(AdminReply::Done { version }),
                CommandResult::TopicCreated { version, topic_id } => {
                    Ok(AdminReply::TopicCreated { version, topic_id })
                }
                CommandResult::ProducerIds { start, count, .. } => {
                    Ok(AdminReply::ProducerIds { start, count })
                }
                CommandResult::Rejected(error) => Err(error),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(MetadataError::NotController {
                    controller: forward
                        .leader_id
                        .map(|id| (id, forward.leader_node.map(|n| n.addr).unwrap_or_default())),
                })
            }
            Err(error) => Err(MetadataError::Unavailable(error.to_string())),
        }
    }

    /// Completes every reassignment whose target replicas are all in sync (controller only).
    async fn complete_reassignments(&self) {
        for (topic, partition, partition_epoch) in self.inner.machine.state().reassignments_ready()
        {
            tracing::info!(%topic, partition, "reassignment complete: dropping the old replicas");
            if let Err(error) = self
                .propose(Command::CompleteReassignment {
                    topic: topic.clone(),
                    partition,
                    partition_epoch,
                })
                .await
            {
                tracing::debug!(%topic, partition, %error, "completing a reassignment");
            }
        }
    }

    fn touch_lease(&self, id: NodeId) {
        // It reached us, so it listens again (a restarted broker registers before Raft, in
        // its backoff, connects to it again).
        self.inner.refusals.answered(id);
        let mut leases = self.inner.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.last.insert(id, Instant::now());
    }

    /// Serves one admin request.
    pub async fn admin(&self, request: AdminRequest) -> Result<AdminReply, MetadataError> {
        match request {
            AdminRequest::Describe => Ok(AdminReply::Cluster(Box::new(self.view()))),
            AdminRequest::CreateTopic {
                name,
                partitions,
                replication_factor,
                config,
            } => {
                self.require_controller()?;
                let config = config.unwrap_or_default();
                let state = self.inner.machine.state();
                state.check_create_topic(&name, partitions, replication_factor, &config)?;
                let placement = state.place_partitions(partitions, replication_factor);
                self.propose(Command::CreateTopic {
                    name,
                    replication_factor,
                    config,
                    partitions: placement,
                })
                .await
            }
            AdminRequest::AlterTopicConfig { name, overrides } => {
                self.require_controller()?;
                if let Some((key, _)) = overrides
                    .iter()
                    .find(|(k, _)| !super::topic_config::ALTERABLE.contains(&k.trim()))
                {
                    return Err(MetadataError::InvalidConfig(format!(
                        "{key} cannot be changed after creation (alterable: {})",
                        super::topic_config::ALTERABLE.join(", ")
                    )));
                }
                let state = self.inner.machine.state();
                let topic = state
                    .topics
                    .get(&name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                let mut config = super::topic_config::with_overrides(&topic.config, &overrides)
                    .map_err(MetadataError::InvalidConfig)?;
                config.min_insync_replicas = config.resolved_min_insync(topic.replication_factor);
                state.check_alter_topic_config(&name, &config)?;
                self.propose(Command::AlterTopicConfig { name, config })
                    .await
            }
            AdminRequest::DeleteTopic { name } => {
                self.require_controller()?;
                if !self.inner.machine.state().topics.contains_key(&name) {
                    return Err(MetadataError::UnknownTopic(name));
                }
                self.propose(Command::DeleteTopic { name }).await
            }
            AdminRequest::RegisterBroker {
                id,
                address,
                metadata_address,
                shards,
                shard_addresses,
                kafka_addresses,
            } => {
                self.require_controller()?;
                self.touch_lease(id);
                let state = self.inner.machine.state();
                let unchanged = state.brokers.get(&id).is_some_and(|b| {
                    b.address == address
                        && b.metadata_address == metadata_address
                        && b.shards == shards
                        && b.shard_addresses == shard_addresses
                        && b.kafka_addresses == kafka_addresses
                        && b.state == BrokerState::Alive
                });
                if unchanged {
                    return Ok(AdminReply::Done {
                        version: state.version,
                    });
                }
                self.propose(Command::RegisterBroker {
                    id,
                    address,
                    metadata_address,
                    shards,
                    shard_addresses,
                    kafka_addresses,
                })
                .await
            }
            AdminRequest::Heartbeat { id } => {
                self.require_controller()?;
                let state = self.inner.machine.state();
                let Some(broker) = state.brokers.get(&id) else {
                    return Err(MetadataError::UnknownBroker(id));
                };
                self.touch_lease(id);
                if broker.state == BrokerState::Dead {
                    tracing::info!(broker = id, "broker heartbeats again: marking it alive");
                    self.propose(Command::SetBrokerState {
                        id,
                        state: BrokerState::Alive,
                    })
                    .await?;
                }
                Ok(AdminReply::HeartbeatAck)
            }
            AdminRequest::AlterInSync {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                in_sync,
            } => {
                self.require_controller()?;
                self.inner.machine.state().check_alter_in_sync(
                    &topic,
                    partition,
                    leader,
                    leader_epoch,
                    partition_epoch,
                    &in_sync,
                )?;
                let reply = self
                    .propose(Command::AlterInSync {
                        topic,
                        partition,
                        leader,
                        leader_epoch,
                        partition_epoch,
                        in_sync,
                    })
                    .await;
                // A replica being added may just have joined: end its reassignment now rather
                // than at the next controller tick.
                self.complete_reassignments().await;
                reply
            }
            AdminRequest::ControlledShutdown { id } => {
                self.require_controller()?;
                let state = self.inner.machine.state();
                // Asked again while the broker waits: propose only what would change something.
                let mut after = (*state).clone();
                if let CommandResult::Rejected(error) =
                    after.apply(&Command::ControlledShutdown { id })
                {
                    return Err(error);
                }
                if after.brokers == state.brokers && after.topics == state.topics {
                    return Ok(AdminReply::Done {
                        version: state.version,
                    });
                }
                tracing::info!(broker = id, "controlled shutdown: moving its leaderships");
                self.propose(Command::ControlledShutdown { id }).await
            }
            AdminRequest::AddPartitions { topic, count } => {
                self.require_controller()?;
                let partitions = self
                    .inner
                    .machine
                    .state()
                    .place_added_partitions(&topic, count)?;
                self.propose(Command::AddPartitions { topic, partitions })
                    .await
            }
            AdminRequest::ElectPreferredLeader { topic, partition } => {
                self.require_controller()?;
                let state = self.inner.machine.state();
                if !state.check_elect_preferred_leader(&topic, partition)? {
                    return Ok(AdminReply::Done {
                        version: state.version,
                    });
                }
                self.propose(Command::ElectPreferredLeader { topic, partition })
                    .await
            }
            AdminRequest::ReassignPartition {
                topic,
                partition,
                brokers,
            } => {
                self.require_controller()?;
                let target = self
                    .inner
                    .machine
                    .state()
                    .place_reassignment(&topic, partition, &brokers)?;
                tracing::info!(%topic, partition, ?brokers, "reassignment started");
                self.propose(Command::ReassignPartition {
                    topic,
                    partition,
                    target,
                })
                .await
            }
            AdminRequest::AllocateProducerIds { count } => {
                self.require_controller()?;
                if count == 0 || count > crate::limits::PRODUCER_ID_BLOCK_MAX {
                    return Err(MetadataError::Malformed(format!(
                        "a producer id block holds 1 to {} ids",
                        crate::limits::PRODUCER_ID_BLOCK_MAX
                    )));
                }
                self.propose(Command::AllocateProducerIds { count }).await
            }
            AdminRequest::AddVoter {
                id,
                metadata_address,
            } => {
                self.require_controller()?;
                let raft = &self.inner.raft;
                raft.add_learner(id, BasicNode::new(&metadata_address), true)
                    .await
                    .map_err(|e| MetadataError::Unavailable(e.to_string()))?;
                let mut voters: BTreeSet<NodeId> = raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .collect();
                voters.insert(id);
                raft.change_membership(voters, false)
                    .await
                    .map_err(|e| MetadataError::Unavailable(e.to_string()))?;
                Ok(AdminReply::Done {
                    version: self.inner.machine.state().version,
                })
            }
        }
    }
}

/// Accepts connections on the metadata port, at most `METADATA_CONNECTIONS_MAX` at once.
async fn serve(node: MetadataNode, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(METADATA_CONNECTIONS_MAX));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let node = node.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(error) = serve_connection(node, stream).await {
                        tracing::debug!(%error, "metadata connection closed");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "metadata accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(node: MetadataNode, mut stream: TcpStream) -> Result<(), WireError> {
    stream.set_nodelay(true)?;
    loop {
        let request = match read_frame::<_, WireRequest>(&mut stream).await {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(WireError::Io(e)) => return Err(WireError::Io(e)),
            Err(error) => {
                // Broken framing: say why, then close.
                let _ = write_frame(&mut stream, &WireResponse::Error(error.to_string())).await;
                return Err(error);
            }
        };
        let raft = node.raft();
        let response = match request {
            WireRequest::AppendEntries(rpc) => {
                WireResponse::AppendEntries(raft.append_entries(rpc).await)
            }
            WireRequest::InstallSnapshot(rpc) => {
                WireResponse::InstallSnapshot(raft.install_snapshot(rpc).await)
            }
            WireRequest::Vote(rpc) => WireResponse::Vote(raft.vote(rpc).await),
            WireRequest::Admin(request) => WireResponse::Admin(node.admin(request).await),
        };
        write_frame(&mut stream, &response).await?;
    }
}

/// While this node is the controller: expire leases of brokers that stopped heartbeating, and
/// declare dead at once a broker whose metadata port refuses connections (its process is gone:
/// no need to wait out its lease); complete reassignments that are ready.
async fn controller_duties(node: MetadataNode) {
    let lease = Duration::from_millis(node.inner.config.lease_ms);
    let mut was_controller = false;
    loop {
        tokio::time::sleep((lease / 4).min(CONTROLLER_TICK_MAX)).await;
        if node.require_controller().is_err() {
            was_controller = false;
            continue;
        }
        let state = node.inner.machine.state();
        let expired: Vec<NodeId> = {
            let mut leases = node.inner.leases.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if !was_controller {
                // A new controller gives every broker a full lease before judging it.
                for id in state.brokers.keys() {
                    leases.last.insert(*id, now);
                }
            }
            let refusing = node.inner.refusals.refusing(REFUSED_DEAD_AFTER);
            state
                .brokers
                .values()
                .filter(|b| b.state != BrokerState::Dead && b.id != node.id())
                .filter(|b| {
                    refusing.contains(&b.id)
                        || leases
                            .last
                            .get(&b.id)
                            .is_none_or(|t| now.duration_since(*t) > lease)
                })
                .map(|b| b.id)
                .collect()
        };
        was_controller = true;
        node.complete_reassignments().await;
        for id in expired {
            tracing::warn!(
                broker = id,
                "broker lease expired or its metadata port refuses connections: marking it dead \
                 and moving its leadership"
            );
            if let Err(error) = node
                .propose(Command::SetBrokerState {
                    id,
                    state: BrokerState::Dead,
                })
                .await
            {
                tracing::warn!(broker = id, %error, "could not mark broker dead");
            }
        }
    }
}

/// Asks the controller of the cluster to join to add this node as a learner, then a voter,
/// retrying until it succeeds.
async fn join_cluster(node: MetadataNode) {
    let config = &node.inner.config;
    let client = AdminClient::new(config.join.clone()).with_timeout(Duration::from_secs(30));
    loop {
        let request = AdminRequest::AddVoter {
            id: config.node_id,
            metadata_address: config.listen.clone(),
        };
        match client.request(request).await {
            Ok(_) => {
                tracing::info!(node = config.node_id, "joined the cluster as a voter");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "joining the cluster failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Registers this broker with the controller, then heartbeats for as long as the node runs.
async fn register_and_heartbeat(node: MetadataNode) {
    let config = &node.inner.config;
    let client =
        AdminClient::new(node.bootstrap()).with_timeout(Duration::from_millis(config.lease_ms));
    let register = AdminRequest::RegisterBroker {
        id: config.node_id,
        address: config.broker_address.clone(),
        metadata_address: config.listen.clone(),
        shards: config.shards,
        shard_addresses: config.shard_addresses.clone(),
        kafka_addresses: config.kafka_addresses.clone(),
    };
    let interval = Duration::from_millis((config.lease_ms / 4).max(50));
    let mut registered = false;
    loop {
        let request = if registered {
            AdminRequest::Heartbeat { id: config.node_id }
        } else {
            register.clone()
        };
        match client.request(request).await {
            Ok(_) => registered = true,
            Err(MetadataError::UnknownBroker(_)) => registered = false,
            Err(error) => tracing::debug!(%error, "heartbeat"),
        }
        tokio::time::sleep(interval).await;
    }
}
