//! ApiVersions (answered in [`super::dispatch`]), Metadata, CreateTopic and DeleteTopic (through
//! the controller), InitProducerId (from the shard's block of ids).

use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use sluice_protocol::native::{
    BrokerInfo, ErrorCode, InitProducerIdRequest, InitProducerIdResponse, MetadataRequest,
    MetadataResponse, PartitionMetadata, TopicMetadata, TopicResponse,
};

use crate::metadata::types::BrokerState;
use crate::metadata::{AdminReply, AdminRequest, MetadataError};
use crate::server::context::{metadata_code, ShardContext};

pub fn metadata(ctx: &ShardContext, request: MetadataRequest) -> MetadataResponse {
    let state = ctx.link.state.borrow().clone();
    let brokers = state
        .brokers
        .values()
        .map(|b| BrokerInfo {
            id: b.id,
            address: b.address.clone(),
            shard_addresses: b.shard_addresses.clone(),
            alive: b.state == BrokerState::Alive,
        })
        .collect();
    let names: Vec<String> = match request.topics {
        Some(names) => names,
        None => state.topics.keys().cloned().collect(),
    };
    let topics = names
        .into_iter()
        .map(|name| match state.topics.get(&name) {
            None => TopicMetadata {
                name,
                error: ErrorCode::UnknownTopicOrPartition,
                partitions: Vec::new(),
            },
            Some(topic) => TopicMetadata {
                name,
                error: ErrorCode::None,
                partitions: topic
                    .partitions
                    .iter()
                    .enumerate()
                    .map(|(i, p)| PartitionMetadata {
                        partition: i as u32,
                        leader: p.leader,
                        leader_epoch: p.leader_epoch,
                        shard: p
                            .leader
                            .and_then(|l| p.replicas.iter().find(|r| r.broker == l))
                            .map_or(0, |r| r.shard),
                        replicas: p.replicas.iter().map(|r| r.broker).collect(),
                        in_sync: p.in_sync.clone(),
                    })
                    .collect(),
            },
        })
        .collect();
    MetadataResponse {
        version: state.version,
        controller: ctx.link.raft.borrow().controller,
        brokers,
        topics,
    }
}

/// Waits (bounded) until this broker has applied the change, so the client's next metadata
/// request sees it, and turns the outcome into a response.
pub async fn topic_outcome(
    ctx: &ShardContext,
    outcome: Result<AdminReply, MetadataError>,
) -> TopicResponse {
    match outcome {
        Ok(AdminReply::TopicCreated { version, .. }) | Ok(AdminReply::Done { version }) => {
            let mut state = ctx.link.state.clone();
            let deadline = Instant::now() + Duration::from_secs(5);
            while state.borrow().version < version && Instant::now() < deadline {
                let changed = async { state.changed().await.is_ok() }.or(async {
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                    true
                });
                if !changed.await {
                    break;
                }
            }
            TopicResponse {
                error: ErrorCode::None,
                message: String::new(),
            }
        }
        Ok(other) => TopicResponse {
            error: ErrorCode::Unavailable,
            message: format!("unexpected reply {other:?}"),
        },
        Err(error) => TopicResponse {
            error: metadata_code(&error),
            message: error.to_string(),
        },
    }
}

/// Hands out the next producer id of this shard's block, fetching a new block from the
/// controller when it runs out.
pub async fn init_producer_id(
    ctx: &ShardContext,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let refused = |error| InitProducerIdResponse {
        error,
        producer_id: -1,
        producer_epoch: -1,
    };
    if request.transactional_id.is_some() {
        return refused(ErrorCode::InvalidConfig);
    }
    let (next, end) = ctx.producer_ids.get();
    let id = if next < end {
        ctx.producer_ids.set((next + 1, end));
        next
    } else {
        match ctx
            .link
            .call(AdminRequest::AllocateProducerIds {
                count: crate::limits::PRODUCER_ID_BLOCK_MAX,
            })
            .await
        {
            Ok(AdminReply::ProducerIds { start, count }) if count > 0 => {
                // Another request on this shard may have refilled meanwhile: keep the newer block.
                ctx.producer_ids.set((start + 1, start + count));
                start
            }
            Ok(_) => return refused(ErrorCode::Unavailable),
            Err(error) => return refused(metadata_code(&error)),
        }
    };
    match i64::try_from(id) {
        Ok(producer_id) => InitProducerIdResponse {
            error: ErrorCode::None,
            producer_id,
            producer_epoch: 0,
        },
        Err(_) => refused(ErrorCode::Unavailable),
    }
}
