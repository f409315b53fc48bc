//! Topic configuration: DescribeConfigs (from this broker's applied metadata),
//! CreateTopicWithConfig (the broker's topic defaults with the request's overrides) and
//! AlterConfigs (a running topic's alterable settings), the last two through the controller.
//! Keys and values: `metadata::topic_config`.

use sluice_protocol::native::{
    AlterConfigsRequest, ConfigEntry, CreateTopicWithConfigRequest, DescribeConfigsRequest,
    DescribeConfigsResponse, ErrorCode, TopicResponse,
};

use super::admin::topic_outcome;
use crate::metadata::topic_config;
use crate::metadata::AdminRequest;
use crate::server::context::ShardContext;

pub fn describe_configs(
    ctx: &ShardContext,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let state = ctx.link.state.borrow().clone();
    match state.topics.get(&request.topic) {
        None => DescribeConfigsResponse {
            error: ErrorCode::UnknownTopicOrPartition,
            configs: Vec::new(),
        },
        Some(topic) => DescribeConfigsResponse {
            error: ErrorCode::None,
            configs: topic_config::describe(&topic.config)
                .into_iter()
                .map(|(key, value)| ConfigEntry { key, value })
                .collect(),
        },
    }
}

pub async fn create_topic_with_config(
    ctx: &ShardContext,
    request: CreateTopicWithConfigRequest,
) -> TopicResponse {
    let overrides: Vec<(String, String)> = request
        .configs
        .into_iter()
        .map(|c| (c.key, c.value))
        .collect();
    let config = match topic_config::with_overrides(&ctx.topic_defaults, &overrides) {
        Ok(config) => config,
        Err(message) => {
            return TopicResponse {
                error: ErrorCode::InvalidConfig,
                message,
            }
        }
    };
    let outcome = ctx
        .link
        .call(AdminRequest::CreateTopic {
            name: request.name,
            partitions: request.partitions,
            replication_factor: request.replication_factor,
            config: Some(config),
        })
        .await;
    topic_outcome(ctx, outcome).await
}

pub async fn alter_configs(ctx: &ShardContext, request: AlterConfigsRequest) -> TopicResponse {
    let outcome = ctx
        .link
        .call(AdminRequest::AlterTopicConfig {
            name: request.topic,
            overrides: request
                .configs
                .into_iter()
                .map(|c| (c.key, c.value))
                .collect(),
        })
        .await;
    topic_outcome(ctx, outcome).await
}
