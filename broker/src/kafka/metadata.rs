//! Kafka's view of the cluster: every shard of every broker is a Kafka node, with an id made
//! from the broker id and the shard ([`node_id`]) and the shard's advertised Kafka address;
//! topic ids are made from Sluice's topic ids ([`topic_uuid`]). Metadata and DescribeCluster.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest,
    MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::frame;
use crate::groups::coordinator::OFFSETS_TOPIC;
use crate::limits::KAFKA_NODE_IDS_PER_BROKER;
use crate::metadata::types::{BrokerState, ClusterState, PartitionInfo, Topic};
use crate::metadata::NodeId;
use crate::server::context::{Response, ShardContext};

/// The cluster id Kafka clients see.
pub const CLUSTER_ID: &str = "sluice";

/// The high half of every topic id: the low half is Sluice's topic id, so ids are never the
/// nil id or Kafka's reserved metadata-topic id.
const TOPIC_ID_HIGH: u64 = 0x736c_7569_6365_0001;

/// The Kafka node id of a broker's shard.
pub fn node_id(broker: NodeId, shard: u32) -> i32 {
    i32::try_from(broker)
        .ok()
        .and_then(|b| b.checked_mul(KAFKA_NODE_IDS_PER_BROKER))
        .and_then(|b| b.checked_add(i32::try_from(shard).ok()?))
        .unwrap_or(-1)
}

/// The broker and shard of a Kafka node id.
pub fn node_of(node: i32) -> Option<(NodeId, u32)> {
    (node >= 0).then_some((
        (node / KAFKA_NODE_IDS_PER_BROKER) as NodeId,
        (node % KAFKA_NODE_IDS_PER_BROKER) as u32,
    ))
}

/// A topic's Kafka id.
pub fn topic_uuid(id: u64) -> Uuid {
    Uuid::from_u64_pair(TOPIC_ID_HIGH, id)
}

/// The topic with this Kafka id.
pub fn topic_by_uuid(state: &ClusterState, id: Uuid) -> Option<&Topic> {
    let (high, low) = id.as_u64_pair();
    if high != TOPIC_ID_HIGH {
        return None;
    }
    state.topics.values().find(|t| t.id == low)
}

/// A broker shard's advertised Kafka address as host and port.
pub fn node_address(
    ctx: &ShardContext,
    state: &ClusterState,
    broker: NodeId,
    shard: u32,
) -> Option<(String, i32)> {
    let address = if broker == ctx.node_id {
        ctx.kafka_addresses.get(shard as usize)?.clone()
    } else {
        state
            .brokers
            .get(&broker)?
            .kafka_addresses
            .get(shard as usize)?
            .clone()
    };
    split_host_port(&address)
}

fn split_host_port(address: &str) -> Option<(String, i32)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

/// Every Kafka node of the cluster (each shard of each broker that has a Kafka address),
/// with whether its broker is fenced or dead.
pub fn nodes(ctx: &ShardContext, state: &ClusterState) -> Vec<(i32, String, i32, bool)> {
    let mut nodes = Vec::new();
    for broker in state.brokers.values() {
        for shard in 0..broker.shards {
            if let Some((host, port)) = node_address(ctx, state, broker.id, shard) {
                let down = broker.state != BrokerState::Alive;
                nodes.push((node_id(broker.id, shard), host, port, down));
            }
        }
    }
    nodes
}

/// The Kafka node leading a partition, if it has a leader.
pub fn leader_node(partition: &PartitionInfo) -> Option<i32> {
    let leader = partition.leader?;
    let shard = partition
        .replicas
        .iter()
        .find(|r| r.broker == leader)?
        .shard;
    Some(node_id(leader, shard))
}

fn controller_node(ctx: &ShardContext) -> i32 {
    ctx.link
        .raft
        .borrow()
        .controller
        .map_or(-1, |broker| node_id(broker, 0))
}

fn describe_topic(state: &ClusterState, topic: &Topic, version: i16) -> MetadataResponseTopic {
    let partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let shard_of = |broker: NodeId| {
                p.replicas
                    .iter()
                    .find(|r| r.broker == broker)
                    .map_or(0, |r| r.shard)
            };
            let leader = leader_node(p);
            let offline = p
                .replicas
                .iter()
                .filter(|r| {
                    state
                        .brokers
                        .get(&r.broker)
                        .is_none_or(|b| b.state == BrokerState::Dead)
                })
                .map(|r| BrokerId(node_id(r.broker, r.shard)))
                .collect();
            MetadataResponsePartition::default()
                .with_error_code(match leader {
                    Some(_) => 0,
                    None => ResponseError::LeaderNotAvailable.code(),
                })
                .with_partition_index(index as i32)
                .with_leader_id(BrokerId(leader.unwrap_or(-1)))
                .with_leader_epoch(p.leader_epoch as i32)
                .with_replica_nodes(
                    p.replicas
                        .iter()
                        .map(|r| BrokerId(node_id(r.broker, r.shard)))
                        .collect(),
                )
                .with_isr_nodes(
                    p.in_sync
                        .iter()
                        .map(|&b| BrokerId(node_id(b, shard_of(b))))
                        .collect(),
                )
                .with_offline_replicas(if version >= 5 { offline } else { Vec::new() })
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_topic_id(if version >= 10 {
            topic_uuid(topic.id)
        } else {
            Uuid::nil()
        })
        .with_is_internal(topic.name == OFFSETS_TOPIC)
        .with_partitions(partitions)
}

/// Metadata: the nodes, the controller and the topics asked for (all of them for a null list,
/// or an empty one at v0), by name or, from v10, by id. Topics are never created on demand.
pub fn metadata(ctx: &ShardContext, version: i16, id: i32, request: MetadataRequest) -> Response {
    let state = ctx.link.state.borrow().clone();
    let all = match &request.topics {
        None => true,
        Some(topics) => version == 0 && topics.is_empty(),
    };
    let topics = if all {
        state
            .topics
            .values()
            .map(|t| describe_topic(&state, t, version))
            .collect()
    } else {
        request
            .topics
            .unwrap_or_default()
            .into_iter()
            .map(|asked| {
                let found = match &asked.name {
                    Some(name) => state.topics.get(name.0.as_str()),
                    None => topic_by_uuid(&state, asked.topic_id),
                };
                match found {
                    Some(topic) => describe_topic(&state, topic, version),
                    None => MetadataResponseTopic::default()
                        .with_name(asked.name.clone())
                        .with_topic_id(if version >= 10 {
                            asked.topic_id
                        } else {
                            Uuid::nil()
                        })
                        .with_error_code(match asked.name {
                            Some(_) => ResponseError::UnknownTopicOrPartition.code(),
                            None => ResponseError::UnknownTopicId.code(),
                        }),
                }
            })
            .collect()
    };
    let brokers = nodes(ctx, &state)
        .into_iter()
        .filter(|(.., down)| !down)
        .map(|(node, host, port, _)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(node))
                .with_host(StrBytes::from_string(host))
                .with_port(port)
        })
        .collect();
    let body = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id((version >= 2).then(|| StrBytes::from_static_str(CLUSTER_ID)))
        .with_controller_id(BrokerId(controller_node(ctx)))
        .with_topics(topics);
    frame::response(ApiKey::Metadata, version, id, &body)
}

/// DescribeCluster: the nodes (fenced ones when asked, from v1 on) and the controller.
pub fn describe_cluster(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    request: DescribeClusterRequest,
) -> Response {
    let state = ctx.link.state.borrow().clone();
    let brokers = nodes(ctx, &state)
        .into_iter()
        .filter(|(.., down)| !down || (version >= 2 && request.include_fenced_brokers))
        .map(|(node, host, port, _)| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(node))
                .with_host(StrBytes::from_string(host))
                .with_port(port)
        })
        .collect();
    let body = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_static_str(CLUSTER_ID))
        .with_controller_id(BrokerId(controller_node(ctx)))
        .with_brokers(brokers);
    frame::response(ApiKey::DescribeCluster, version, id, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_round_trip() {
        for (broker, shard) in [(1, 0), (1, 1), (7, 999), (2_147_482, 3)] {
            let node = node_id(broker, shard);
            assert!(node >= 0);
            assert_eq!(node_of(node), Some((broker, shard)));
        }
        assert_eq!(node_id(u64::MAX, 0), -1);
    }

    #[test]
    fn topic_ids_round_trip_and_are_never_reserved() {
        let mut state = ClusterState::default();
        let topic = Topic {
            name: "t".into(),
            id: 0,
            replication_factor: 1,
            config: Default::default(),
            partitions: Vec::new(),
        };
        state.topics.insert("t".into(), topic);
        let id = topic_uuid(0);
        assert_ne!(id, Uuid::nil());
        assert_eq!(
            topic_by_uuid(&state, id).map(|t| t.name.as_str()),
            Some("t")
        );
        assert!(topic_by_uuid(&state, Uuid::from_u64_pair(1, 0)).is_none());
    }

    #[test]
    fn host_and_port_split() {
        assert_eq!(
            split_host_port("127.0.0.1:9092"),
            Some(("127.0.0.1".into(), 9092))
        );
        assert_eq!(split_host_port("[::1]:9102"), Some(("::1".into(), 9102)));
        assert_eq!(split_host_port("nohost"), None);
    }
}
