//! Consumer groups over the Kafka protocol, on the shard's coordinator (`groups::
//! coordinator`), the same one native consumers use: FindCoordinator (the shard leading the
//! group's partition of the offsets log, as a Kafka node; batched keys from v4), OffsetCommit
//! and OffsetFetch (the same offsets store), ListGroups, DescribeGroups, and KIP-848's
//! ConsumerGroupHeartbeat, which maps onto the coordinator's heartbeat one to one: Sluice's
//! coordinator already computes assignments on the server with member epochs.

use std::collections::BTreeMap;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse,
    ConsumerProtocolAssignment, DescribeGroupsRequest, DescribeGroupsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupId, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::ResponseError;
use sluice_protocol::group_api::{
    self, GroupHeartbeatRequest, GroupPartition, OffsetCommitPartition, Subscription,
    NO_MEMBER_EPOCH,
};
use sluice_protocol::native::ErrorCode;

use super::fetch::topic_name;
use super::{errors, frame, metadata};
use crate::server::api::groups::locate_coordinator;
use crate::server::context::{Response, ShardContext};

/// FindCoordinator's key type of a consumer group (1 is a transactional id).
const KEY_TYPE_GROUP: i8 = 0;

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// Where one key's coordinator is, as a Kafka node: (node, host, port) or the error.
async fn coordinator_of(
    ctx: &ShardContext,
    key_type: i8,
    key: &str,
) -> Result<(i32, String, i32), (i16, String)> {
    if key_type != KEY_TYPE_GROUP {
        return Err((
            ResponseError::InvalidRequest.code(),
            "only consumer groups have coordinators here: there are no transactions".into(),
        ));
    }
    let (broker, shard) = locate_coordinator(ctx, key)
        .await
        .map_err(|(code, message)| (errors::code(code), message))?;
    let state = ctx.link.state.borrow().clone();
    let (host, port) = metadata::node_address(ctx, &state, broker, shard).ok_or_else(|| {
        (
            ResponseError::CoordinatorNotAvailable.code(),
            format!("broker {broker} shard {shard} has no Kafka address"),
        )
    })?;
    Ok((metadata::node_id(broker, shard), host, port))
}

pub async fn find_coordinator(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    request: FindCoordinatorRequest,
) -> Response {
    let mut body = FindCoordinatorResponse::default();
    if version >= 4 {
        let mut coordinators = Vec::with_capacity(request.coordinator_keys.len());
        for key in request.coordinator_keys {
            let answer = Coordinator::default().with_key(key.clone());
            coordinators.push(match coordinator_of(ctx, request.key_type, &key).await {
                Ok((node, host, port)) => answer
                    .with_node_id(BrokerId(node))
                    .with_host(text(host))
                    .with_port(port),
                Err((code, message)) => answer
                    .with_node_id(BrokerId(-1))
                    .with_port(-1)
                    .with_error_code(code)
                    .with_error_message(Some(text(message))),
            });
        }
        body = body.with_coordinators(coordinators);
    } else {
        let key_type = if version >= 1 {
            request.key_type
        } else {
            KEY_TYPE_GROUP
        };
        body = match coordinator_of(ctx, key_type, &request.key).await {
            Ok((node, host, port)) => body
                .with_node_id(BrokerId(node))
                .with_host(text(host))
                .with_port(port),
            Err((code, message)) => body
                .with_node_id(BrokerId(-1))
                .with_port(-1)
                .with_error_code(code)
                .with_error_message((version >= 1).then(|| text(message))),
        };
    }
    frame::response(ApiKey::FindCoordinator, version, id, &body)
}

/// OffsetCommit: a member's commit (its member epoch, or its generation once classic groups
/// exist), or, with no member id and generation -1, a commit from outside the group (a
/// consumer with a manual assignment), which the coordinator takes while the group has no
/// members.
pub async fn offset_commit(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    request: OffsetCommitRequest,
) -> Response {
    let member_id = (!request.member_id.is_empty()).then(|| request.member_id.to_string());
    let member_epoch = match &member_id {
        None => NO_MEMBER_EPOCH,
        Some(_) => request.generation_id_or_member_epoch,
    };
    // Offsets below zero cannot be committed; they are answered without asking.
    let mut refused = BTreeMap::new();
    let mut partitions = Vec::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            match (
                u32::try_from(p.partition_index),
                u64::try_from(p.committed_offset),
            ) {
                (Ok(partition), Ok(offset)) => partitions.push(OffsetCommitPartition {
                    topic: topic.name.0.to_string(),
                    partition,
                    offset,
                    metadata: p
                        .committed_metadata
                        .as_ref()
                        .map_or(String::new(), |m| m.to_string()),
                }),
                _ => {
                    refused.insert(
                        (topic.name.0.to_string(), p.partition_index),
                        ResponseError::InvalidRequest.code(),
                    );
                }
            }
        }
    }
    let answer = ctx
        .groups
        .commit(group_api::OffsetCommitRequest {
            group: request.group_id.0.to_string(),
            member_id,
            member_epoch,
            partitions,
        })
        .await;
    let per_partition: BTreeMap<(String, i32), i16> = answer
        .partitions
        .iter()
        .map(|p| ((p.topic.clone(), p.partition as i32), errors::code(p.error)))
        .collect();
    let group_error = errors::code(answer.error);
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let key = (topic.name.0.to_string(), p.partition_index);
                    let code = refused.get(&key).copied().unwrap_or(if group_error != 0 {
                        group_error
                    } else {
                        per_partition.get(&key).copied().unwrap_or(0)
                    });
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    let body = OffsetCommitResponse::default().with_topics(topics);
    frame::response(ApiKey::OffsetCommit, version, id, &body)
}

/// One group's committed offsets: (group error, [(topic, [(partition, offset, metadata)])]).
type GroupOffsets = (i16, Vec<(String, Vec<(i32, i64, String)>)>);

async fn group_offsets(
    ctx: &ShardContext,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> GroupOffsets {
    let partitions = topics.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|(topic, ps)| {
                ps.iter().filter_map(|&p| {
                    Some(GroupPartition {
                        topic: topic.clone(),
                        partition: u32::try_from(p).ok()?,
                    })
                })
            })
            .collect()
    });
    let answer = ctx
        .groups
        .fetch_offsets(group_api::OffsetFetchRequest {
            group: group.to_string(),
            partitions,
        })
        .await;
    // GroupIdNotFound: a group that never committed has no offsets, which is not an error.
    let error = match answer.error {
        ErrorCode::GroupIdNotFound => 0,
        other => errors::code(other),
    };
    let mut found: BTreeMap<String, Vec<(i32, i64, String)>> = BTreeMap::new();
    for c in answer.partitions {
        found.entry(c.topic).or_default().push((
            c.partition as i32,
            c.offset.map_or(-1, |o| o as i64),
            c.metadata,
        ));
    }
    let topics = match topics {
        // Every partition asked for is answered, -1 where nothing is committed.
        Some(asked) => asked
            .into_iter()
            .map(|(topic, ps)| {
                let known = found.get(&topic);
                let answered = ps
                    .into_iter()
                    .map(|p| {
                        known
                            .and_then(|k| k.iter().find(|(q, ..)| *q == p).cloned())
                            .unwrap_or((p, -1, String::new()))
                    })
                    .collect();
                (topic, answered)
            })
            .collect(),
        None => found.into_iter().collect(),
    };
    (error, topics)
}

/// OffsetFetch: one group (up to v7) or several (from v8); all the group's offsets for a null
/// topic list.
pub async fn offset_fetch(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    request: OffsetFetchRequest,
) -> Response {
    let mut body = OffsetFetchResponse::default();
    if version >= 8 {
        let mut groups = Vec::with_capacity(request.groups.len());
        for group in request.groups {
            let topics = group.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let (error, topics) = group_offsets(ctx, &group.group_id.0, topics).await;
            groups.push(
                OffsetFetchResponseGroup::default()
                    .with_group_id(group.group_id)
                    .with_error_code(error)
                    .with_topics(
                        topics
                            .into_iter()
                            .map(|(topic, ps)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(topic_name(&topic))
                                    .with_partitions(
                                        ps.into_iter()
                                            .map(|(p, offset, meta)| {
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(p)
                                                    .with_committed_offset(offset)
                                                    .with_committed_leader_epoch(-1)
                                                    .with_metadata(Some(text(meta)))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
            );
        }
        body = body.with_groups(groups);
    } else {
        let topics = request.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect()
        });
        let (error, topics) = group_offsets(ctx, &request.group_id.0, topics).await;
        body = body
            .with_topics(
                topics
                    .into_iter()
                    .map(|(topic, ps)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(topic_name(&topic))
                            .with_partitions(
                                ps.into_iter()
                                    .map(|(p, offset, meta)| {
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(offset)
                                            .with_committed_leader_epoch(-1)
                                            .with_metadata(Some(text(meta)))
                                            // Up to v1 a group error is told per partition.
                                            .with_error_code(if version < 2 { error } else { 0 })
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
            .with_error_code(if version >= 2 { error } else { 0 });
    }
    frame::response(ApiKey::OffsetFetch, version, id, &body)
}

/// ListGroups: the groups this shard coordinates (a Kafka node each; clients ask every node),
/// filtered by state (from v4) and type, `classic` or `consumer` (from v5).
pub async fn list_groups(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    request: ListGroupsRequest,
) -> Response {
    let answer = ctx.groups.list().await;
    let wanted = |filter: &[StrBytes], value: &str| {
        filter.is_empty() || filter.iter().any(|f| f.eq_ignore_ascii_case(value))
    };
    let groups = answer
        .groups
        .into_iter()
        .filter(|g| wanted(&request.states_filter, &g.state))
        .filter(|g| wanted(&request.types_filter, &g.group_type))
        .map(|g| {
            let mut listed = ListedGroup::default()
                .with_group_id(GroupId(text(g.group)))
                .with_protocol_type(text(g.protocol_type));
            if version >= 4 {
                listed = listed.with_group_state(text(g.state));
            }
            if version >= 5 {
                listed = listed.with_group_type(text(g.group_type));
            }
            listed
        })
        .collect();
    let body = ListGroupsResponse::default()
        .with_error_code(errors::code(answer.error))
        .with_groups(groups);
    frame::response(ApiKey::ListGroups, version, id, &body)
}

/// A member's assignment as the classic protocol's embedded `ConsumerProtocolAssignment`
/// (version 0, prefixed by its version as Kafka frames it), which DescribeGroups carries.
fn embedded_assignment(partitions: &[GroupPartition]) -> bytes::Bytes {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for p in partitions {
        by_topic
            .entry(p.topic.as_str())
            .or_default()
            .push(p.partition as i32);
    }
    let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(
        by_topic
            .into_iter()
            .map(|(topic, ps)| {
                TopicPartition::default()
                    .with_topic(topic_name(topic))
                    .with_partitions(ps)
            })
            .collect(),
    );
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    match assignment.encode(&mut buf, 0) {
        Ok(()) => buf.freeze(),
        Err(_) => bytes::Bytes::new(),
    }
}

/// DescribeGroups: state, protocol and members with their metadata and assignments (the
/// clients' own bytes for classic groups; for KIP-848 groups, what each member holds as the
/// classic protocol's embedded assignment). A group this coordinator does not know is `Dead`
/// with no error, as Kafka answers up to v5.
pub async fn describe_groups(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    request: DescribeGroupsRequest,
) -> Response {
    let mut groups = Vec::with_capacity(request.groups.len());
    for group in request.groups {
        let name = group.0.to_string();
        let described = DescribedGroup::default().with_group_id(group);
        let description = match ctx.groups.classic_describe(&name).await {
            Err(error) => {
                groups.push(described.with_error_code(errors::code(error)));
                continue;
            }
            Ok(None) => {
                groups.push(described.with_group_state(text("Dead")));
                continue;
            }
            Ok(Some(description)) => description,
        };
        // KIP-848 members come without bytes: their holdings, from the coordinator.
        let held: BTreeMap<String, Vec<GroupPartition>> =
            if description.members.iter().all(|m| m.assignment.is_empty()) {
                ctx.groups
                    .describe(group_api::DescribeGroupRequest { group: name })
                    .await
                    .members
                    .into_iter()
                    .map(|m| (m.member_id, m.assignment))
                    .collect()
            } else {
                BTreeMap::new()
            };
        let members = description
            .members
            .into_iter()
            .map(|m| {
                let assignment = match held.get(&m.member_id) {
                    Some(partitions) => embedded_assignment(partitions),
                    None => m.assignment.into(),
                };
                let member = DescribedGroupMember::default()
                    .with_member_id(text(m.member_id))
                    .with_client_id(text(m.client_id))
                    .with_client_host(text(m.client_host))
                    .with_member_metadata(m.metadata.into())
                    .with_member_assignment(assignment);
                if version >= 4 {
                    member.with_group_instance_id(m.instance_id.map(text))
                } else {
                    member
                }
            })
            .collect();
        groups.push(
            described
                .with_group_state(text(description.state))
                .with_protocol_type(text(description.protocol_type))
                .with_protocol_data(text(description.protocol_name))
                .with_members(members),
        );
    }
    let body = DescribeGroupsResponse::default().with_groups(groups);
    frame::response(ApiKey::DescribeGroups, version, id, &body)
}

/// ConsumerGroupHeartbeat (KIP-848): join (epoch 0, the coordinator issues the member id),
/// heartbeat, leave (-1, or -2 for a static member), with subscriptions by name or by regular
/// expression and partitions named by topic id. The answer carries the member's whole target
/// assignment every time.
pub async fn consumer_group_heartbeat(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    request: ConsumerGroupHeartbeatRequest,
) -> Response {
    let state = ctx.link.state.borrow().clone();
    let subscription = match (
        &request.subscribed_topic_regex,
        &request.subscribed_topic_names,
    ) {
        (Some(regex), _) if !regex.is_empty() => Some(Subscription::Pattern(regex.to_string())),
        (_, Some(names)) => Some(Subscription::Topics(
            names.iter().map(|n| n.0.to_string()).collect(),
        )),
        _ => None,
    };
    let owned = request.topic_partitions.as_ref().map(|topics| {
        topics
            .iter()
            .filter_map(|t| {
                let topic = metadata::topic_by_uuid(&state, t.topic_id)?;
                Some(t.partitions.iter().filter_map(|&p| {
                    Some(GroupPartition {
                        topic: topic.name.clone(),
                        partition: u32::try_from(p).ok()?,
                    })
                }))
            })
            .flatten()
            .collect()
    });
    let answer = ctx
        .groups
        .heartbeat(GroupHeartbeatRequest {
            group: request.group_id.0.to_string(),
            member_id: (!request.member_id.is_empty()).then(|| request.member_id.to_string()),
            member_epoch: request.member_epoch,
            instance_id: request.instance_id.as_ref().map(|i| i.to_string()),
            session_timeout_ms: 0,
            assignor: request.server_assignor.as_ref().map(|a| a.to_string()),
            subscription,
            owned,
        })
        .await;
    let mut body = ConsumerGroupHeartbeatResponse::default()
        .with_error_code(errors::code(answer.error))
        .with_error_message(errors::message(answer.error, &answer.message))
        .with_member_id((!answer.member_id.is_empty()).then(|| text(answer.member_id)))
        .with_member_epoch(answer.member_epoch)
        .with_heartbeat_interval_ms(answer.heartbeat_interval_ms as i32);
    if answer.error == ErrorCode::None && answer.member_epoch >= 0 {
        let mut by_topic: BTreeMap<uuid::Uuid, Vec<i32>> = BTreeMap::new();
        for p in &answer.assignment {
            if let Some(topic) = state.topics.get(&p.topic) {
                by_topic
                    .entry(metadata::topic_uuid(topic.id))
                    .or_default()
                    .push(p.partition as i32);
            }
        }
        body = body.with_assignment(Some(
            Assignment::default().with_topic_partitions(
                by_topic
                    .into_iter()
                    .map(|(topic_id, partitions)| {
                        TopicPartitions::default()
                            .with_topic_id(topic_id)
                            .with_partitions(partitions)
                    })
                    .collect(),
            ),
        ));
    }
    frame::response(ApiKey::ConsumerGroupHeartbeat, version, id, &body)
}
