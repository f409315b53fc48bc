//! The native protocol's request handlers, one module per API (or family of APIs), and
//! [`dispatch`], which decodes a request and starts its handler. Handlers know nothing of
//! framing or sockets: they take a decoded request and return a [`Response`] (or the task that
//! will yield it), so the replica fetch and a Kafka listener can reuse them.
//!
//! - [`admin`] serves ApiVersions, Metadata, CreateTopic, DeleteTopic, InitProducerId and the
//!   partition admin requests (AddPartitions, ElectPreferredLeader, ReassignPartition);
//! - [`produce`] serves Produce;
//! - [`fetch`] serves Fetch (consumers);
//! - [`list_offsets`] serves ListOffsets (earliest, latest, by time);
//! - [`replica_fetch`] serves ReplicaFetch (followers, on the leader);
//! - [`groups`] serves FindCoordinator and hands the group requests to the shard's coordinator.
//! - [`describe_logs`] serves DescribeLogs (the shard's partition logs, for operators);
//! - [`describe_latency`] serves DescribeLatency (the shard's produce and flush latencies);
//! - [`configs`] serves DescribeConfigs, CreateTopicWithConfig and AlterConfigs.

pub mod admin;
pub mod configs;
pub mod describe_latency;
pub mod describe_logs;
pub mod fetch;
pub mod groups;
pub mod list_offsets;
pub mod produce;
pub mod replica_fetch;

use std::rc::Rc;

use glommio::task::JoinHandle;
use sluice_protocol::native::{
    decode_control, AddPartitionsRequest, AlterConfigsRequest, ApiKey, ApiRange,
    ApiVersionsResponse, CreateTopicRequest, CreateTopicWithConfigRequest, DeleteTopicRequest,
    DescribeConfigsRequest, DescribeLatencyRequest, DescribeLogsRequest,
    ElectPreferredLeaderRequest, FetchRequest, FrameDecodeError, InitProducerIdRequest,
    ListOffsetsRequest, MetadataRequest, ProduceRequest, ReassignPartitionRequest,
    ReplicaFetchRequest, RequestHeader,
};

use sluice_protocol::group_api::{
    DeleteGroupRequest, DescribeGroupRequest, FindCoordinatorRequest, GroupHeartbeatRequest,
    ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest,
};

use super::context::{response, Response, ShardContext};
use crate::metadata::AdminRequest;

#[derive(Debug)]
pub enum DispatchError {
    UnsupportedApi,
    UnsupportedVersion,
    Malformed(FrameDecodeError),
}

impl From<FrameDecodeError> for DispatchError {
    fn from(error: FrameDecodeError) -> Self {
        DispatchError::Malformed(error)
    }
}

/// Decodes one request and starts handling it; returns the task that yields its response.
pub async fn dispatch(
    ctx: &Rc<ShardContext>,
    header: RequestHeader,
    control: &[u8],
    data: &[u8],
) -> Result<JoinHandle<Option<Response>>, DispatchError> {
    let api = ApiKey::from_u16(header.api_key).ok_or(DispatchError::UnsupportedApi)?;
    let (min, max) = api.versions();
    if header.api_version < min || header.api_version > max {
        return Err(DispatchError::UnsupportedVersion);
    }
    let id = header.correlation_id;
    let ctx = Rc::clone(ctx);
    Ok(match api {
        ApiKey::ApiVersions => {
            let body = ApiVersionsResponse {
                apis: ApiKey::ALL
                    .iter()
                    .map(|k| ApiRange {
                        key: *k as u16,
                        min: k.versions().0,
                        max: k.versions().1,
                    })
                    .collect(),
                broker_id: ctx.node_id,
                shard: ctx.shard,
            };
            glommio::spawn_local(async move { Some(response(id, &body)) }).detach()
        }
        ApiKey::Metadata => {
            let request: MetadataRequest = decode_control(control)?;
            glommio::spawn_local(async move { Some(response(id, &admin::metadata(&ctx, request))) })
                .detach()
        }
        ApiKey::CreateTopic => {
            let request: CreateTopicRequest = decode_control(control)?;
            glommio::spawn_local(async move {
                let outcome = ctx
                    .link
                    .call(AdminRequest::CreateTopic {
                        name: request.name,
                        partitions: request.partitions,
                        replication_factor: request.replication_factor,
                        config: Some(ctx.topic_defaults.clone()),
                    })
                    .await;
                Some(response(id, &admin::topic_outcome(&ctx, outcome).await))
            })
            .detach()
        }
        ApiKey::DeleteTopic => {
            let request: DeleteTopicRequest = decode_control(control)?;
            glommio::spawn_local(async move {
                let outcome = ctx
                    .link
                    .call(AdminRequest::DeleteTopic { name: request.name })
                    .await;
                Some(response(id, &admin::topic_outcome(&ctx, outcome).await))
            })
            .detach()
        }
        ApiKey::AddPartitions => {
            let request: AddPartitionsRequest = decode_control(control)?;
            admin_call(
                ctx,
                id,
                AdminRequest::AddPartitions {
                    topic: request.topic,
                    count: request.count,
                },
            )
        }
        ApiKey::ElectPreferredLeader => {
            let request: ElectPreferredLeaderRequest = decode_control(control)?;
            admin_call(
                ctx,
                id,
                AdminRequest::ElectPreferredLeader {
                    topic: request.topic,
                    partition: request.partition,
                },
            )
        }
        ApiKey::ReassignPartition => {
            let request: ReassignPartitionRequest = decode_control(control)?;
            admin_call(
                ctx,
                id,
                AdminRequest::ReassignPartition {
                    topic: request.topic,
                    partition: request.partition,
                    brokers: request.brokers,
                },
            )
        }
        ApiKey::Produce => {
            let request: ProduceRequest = decode_control(control)?;
            produce::produce(ctx, id, request, data).await?
        }
        ApiKey::Fetch => {
            let request: FetchRequest = decode_control(control)?;
            let bulk = ctx.bulk;
            super::shard::spawn_into(
                bulk,
                async move { Some(fetch::fetch(&ctx, id, request).await) },
            )
            .detach()
        }
        ApiKey::InitProducerId => {
            let request: InitProducerIdRequest = decode_control(control)?;
            glommio::spawn_local(async move {
                Some(response(id, &admin::init_producer_id(&ctx, request).await))
            })
            .detach()
        }
        ApiKey::ReplicaFetch => {
            let request: ReplicaFetchRequest = decode_control(control)?;
            let bulk = ctx.bulk;
            super::shard::spawn_into(bulk, async move {
                Some(replica_fetch::replica_fetch(&ctx, id, request).await)
            })
            .detach()
        }
        ApiKey::DescribeLogs => {
            let request: DescribeLogsRequest = decode_control(control)?;
            glommio::spawn_local(async move {
                Some(response(id, &describe_logs::describe_logs(&ctx, request)))
            })
            .detach()
        }
        ApiKey::DescribeLatency => {
            let request: DescribeLatencyRequest = decode_control(control)?;
            glommio::spawn_local(async move {
                Some(response(
                    id,
                    &describe_latency::describe_latency(&ctx, request),
                ))
            })
            .detach()
        }
        ApiKey::DescribeConfigs => {
            let request: DescribeConfigsRequest = decode_control(control)?;
            glommio::spawn_local(async move {
                Some(response(id, &configs::describe_configs(&ctx, request)))
            })
            .detach()
        }
        ApiKey::CreateTopicWithConfig => {
            let request: CreateTopicWithConfigRequest = decode_control(control)?;
            glommio::spawn_local(async move {
                Some(response(
                    id,
                    &configs::create_topic_with_config(&ctx, request).await,
                ))
            })
            .detach()
        }
        ApiKey::AlterConfigs => {
            let request: AlterConfigsRequest = decode_control(control)?;
            glommio::spawn_local(async move {
                Some(response(id, &configs::alter_configs(&ctx, request).await))
            })
            .detach()
        }
        ApiKey::ListOffsets => {
            let request: ListOffsetsRequest = decode_control(control)?;
            glommio::spawn_local(async move {
                Some(response(
                    id,
                    &list_offsets::list_offsets(&ctx, request).await,
                ))
            })
            .detach()
        }
        ApiKey::FindCoordinator => {
            let request: FindCoordinatorRequest = decode_control(control)?;
            glommio::spawn_local(async move {
                Some(response(id, &groups::find_coordinator(&ctx, request).await))
            })
            .detach()
        }
        ApiKey::GroupHeartbeat => {
            let request: GroupHeartbeatRequest = decode_control(control)?;
            glommio::spawn_local(
                async move { Some(response(id, &ctx.groups.heartbeat(request).await)) },
            )
            .detach()
        }
        ApiKey::OffsetCommit => {
            let request: OffsetCommitRequest = decode_control(control)?;
            glommio::spawn_local(
                async move { Some(response(id, &ctx.groups.commit(request).await)) },
            )
            .detach()
        }
        ApiKey::OffsetFetch => {
            let request: OffsetFetchRequest = decode_control(control)?;
            glommio::spawn_local(async move {
                Some(response(id, &ctx.groups.fetch_offsets(request).await))
            })
            .detach()
        }
        ApiKey::ListGroups => {
            let _: ListGroupsRequest = decode_control(control)?;
            glommio::spawn_local(async move { Some(response(id, &ctx.groups.list().await)) })
                .detach()
        }
        ApiKey::DescribeGroup => {
            let request: DescribeGroupRequest = decode_control(control)?;
            glommio::spawn_local(
                async move { Some(response(id, &ctx.groups.describe(request).await)) },
            )
            .detach()
        }
        ApiKey::DeleteGroup => {
            let request: DeleteGroupRequest = decode_control(control)?;
            glommio::spawn_local(
                async move { Some(response(id, &ctx.groups.delete(request).await)) },
            )
            .detach()
        }
    })
}

/// Forwards an admin request to the controller and answers with its outcome (a
/// [`sluice_protocol::native::TopicResponse`]) once this broker has applied it.
fn admin_call(
    ctx: Rc<ShardContext>,
    id: u32,
    request: AdminRequest,
) -> JoinHandle<Option<Response>> {
    glommio::spawn_local(async move {
        let outcome = ctx.link.call(request).await;
        Some(response(id, &admin::topic_outcome(&ctx, outcome).await))
    })
    .detach()
}
