//! The consumer-group APIs: FindCoordinator (which creates the offsets log on first use) and
//! the requests a coordinator serves, handed to the shard's [`crate::groups::coordinator`].

use sluice_protocol::group_api::{FindCoordinatorRequest, FindCoordinatorResponse};
use sluice_protocol::native::ErrorCode;

use crate::groups::coordinator::OFFSETS_TOPIC;
use crate::groups::records::partition_for;
use crate::limits::GROUP_ID_BYTES_MAX;
use crate::metadata::types::TopicConfig;
use crate::metadata::{AdminRequest, MetadataError, NodeId};
use crate::server::api::admin::topic_outcome;
use crate::server::context::ShardContext;

/// The configuration of the offsets log: never deleted by age or size (its records are the
/// latest state of every group, kept until a group is deleted), in small segments so that
/// compaction has sealed segments to clean.
fn offsets_topic_config(defaults: &TopicConfig, segment_bytes: u64) -> TopicConfig {
    TopicConfig {
        segment_bytes: segment_bytes.max(defaults.message_bytes_max),
        segment_age_ms: None,
        retention_ms: None,
        retention_bytes: None,
        cleanup_policy: crate::storage::CleanupPolicy::Compact,
        ..defaults.clone()
    }
}

/// Where a group's coordinator is: the leader shard of the group's partition of the offsets
/// log, which is created (replication factor min(3, live brokers)) the first time any group
/// asks.
pub async fn find_coordinator(
    ctx: &ShardContext,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let located = locate_coordinator(ctx, &request.group)
        .await
        .and_then(|(broker_id, shard)| {
            let state = ctx.link.state.borrow().clone();
            let address = state
                .brokers
                .get(&broker_id)
                .and_then(|b| b.shard_addresses.get(shard as usize).cloned())
                .ok_or_else(|| {
                    (
                        ErrorCode::CoordinatorNotAvailable,
                        format!("broker {broker_id} has no address for shard {shard}"),
                    )
                })?;
            Ok((broker_id, address))
        });
    match located {
        Ok((broker_id, address)) => FindCoordinatorResponse {
            error: ErrorCode::None,
            message: String::new(),
            broker_id,
            address,
        },
        Err((error, message)) => FindCoordinatorResponse {
            error,
            message,
            broker_id: 0,
            address: String::new(),
        },
    }
}

/// The coordinator of `group`: the broker and shard that lead the group's partition of the
/// offsets log, created on first use; or why there is none now. The native and the Kafka
/// FindCoordinator share it.
pub async fn locate_coordinator(
    ctx: &ShardContext,
    group: &str,
) -> Result<(NodeId, u32), (ErrorCode, String)> {
    if group.is_empty() || group.len() > GROUP_ID_BYTES_MAX {
        return Err((
            ErrorCode::InvalidGroupId,
            format!("a group id has 1 to {GROUP_ID_BYTES_MAX} bytes"),
        ));
    }
    let mut state = ctx.link.state.borrow().clone();
    if !state.topics.contains_key(OFFSETS_TOPIC) {
        let live = state.live_brokers().len().max(1) as u32;
        let outcome = ctx
            .link
            .call(AdminRequest::CreateTopic {
                name: OFFSETS_TOPIC.to_string(),
                partitions: ctx.groups.config().offsets_partitions,
                replication_factor: live.min(3),
                config: Some(offsets_topic_config(
                    &ctx.topic_defaults,
                    ctx.groups.config().offsets_segment_bytes,
                )),
            })
            .await;
        match outcome {
            Err(MetadataError::TopicExists(_)) => {}
            other => {
                let created = topic_outcome(ctx, other).await;
                if created.error != ErrorCode::None {
                    return Err((
                        ErrorCode::CoordinatorNotAvailable,
                        format!("creating the offsets log: {}", created.message),
                    ));
                }
                tracing::info!(
                    partitions = ctx.groups.config().offsets_partitions,
                    replicas = live.min(3),
                    "created the offsets log"
                );
            }
        }
        state = ctx.link.state.borrow().clone();
    }
    let Some(topic) = state.topics.get(OFFSETS_TOPIC) else {
        return Err((
            ErrorCode::CoordinatorNotAvailable,
            "the offsets log is being created".into(),
        ));
    };
    let partition = partition_for(group, topic.partitions.len() as u32);
    let info = &topic.partitions[partition as usize];
    info.leader
        .and_then(|leader| {
            let shard = info.replicas.iter().find(|r| r.broker == leader)?.shard;
            Some((leader, shard))
        })
        .ok_or_else(|| {
            (
                ErrorCode::CoordinatorNotAvailable,
                format!("partition {partition} of the offsets log has no leader now"),
            )
        })
}
