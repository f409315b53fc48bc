//! The admin APIs, each through its native handler: CreateTopics (`configs::
//! create_topic_with_config`: the broker's defaults with the request's Kafka-named settings),
//! DeleteTopics and CreatePartitions (through the controller), DescribeConfigs (topics: their
//! settings; brokers: none), InitProducerId (idempotent producers; transactional ids are
//! refused: there are no transactions).

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    ApiKey, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, InitProducerIdRequest, InitProducerIdResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_protocol::native::{self, ErrorCode};

use super::{errors, frame, metadata};
use crate::metadata::AdminRequest;
use crate::server::api::{admin, configs};
use crate::server::context::{Response, ShardContext};

/// Kafka's resource types in DescribeConfigs.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// `config_source` of a topic's own setting.
const SOURCE_TOPIC: i8 = 1;

/// CreateTopics: -1 partitions or replicas take the broker's default of 1. `validate_only`
/// checks the name is free and creates nothing. Answered once this broker has applied each
/// creation.
pub async fn create_topics(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    request: CreateTopicsRequest,
) -> Response {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let partitions = if topic.num_partitions == -1 {
            Some(1)
        } else {
            u32::try_from(topic.num_partitions).ok()
        };
        let replicas = if topic.replication_factor == -1 {
            Some(1)
        } else {
            u32::try_from(topic.replication_factor).ok()
        };
        let outcome = match (partitions, replicas, topic.assignments.is_empty()) {
            (_, _, false) => native::TopicResponse {
                error: ErrorCode::InvalidConfig,
                message: "manual replica assignments are not supported".into(),
            },
            (None, ..) => native::TopicResponse {
                error: ErrorCode::InvalidPartitions,
                message: format!("{} partitions", topic.num_partitions),
            },
            (_, None, _) => native::TopicResponse {
                error: ErrorCode::InvalidReplicationFactor,
                message: format!("replication factor {}", topic.replication_factor),
            },
            (Some(_), Some(_), true) if request.validate_only => {
                let exists = ctx.link.state.borrow().topics.contains_key(&name);
                native::TopicResponse {
                    error: if exists {
                        ErrorCode::TopicExists
                    } else {
                        ErrorCode::None
                    },
                    message: String::new(),
                }
            }
            (Some(partitions), Some(replication_factor), true) => {
                let configs = topic
                    .configs
                    .iter()
                    .filter_map(|c| {
                        Some(native::ConfigEntry {
                            key: c.name.to_string(),
                            value: c.value.as_ref()?.to_string(),
                        })
                    })
                    .collect();
                configs::create_topic_with_config(
                    ctx,
                    native::CreateTopicWithConfigRequest {
                        name: name.clone(),
                        partitions,
                        replication_factor,
                        configs,
                    },
                )
                .await
            }
        };
        let created = ctx.link.state.borrow().topics.get(&name).cloned();
        let mut result = CreatableTopicResult::default()
            .with_name(topic.name)
            .with_error_code(errors::code(outcome.error))
            .with_error_message(errors::message(outcome.error, &outcome.message));
        if version >= 5 {
            result = result
                .with_num_partitions(created.as_ref().map_or(-1, |t| t.partitions.len() as i32))
                .with_replication_factor(
                    created.as_ref().map_or(-1, |t| t.replication_factor as i16),
                );
        }
        if version >= 7 && outcome.error == ErrorCode::None {
            if let Some(t) = &created {
                result = result.with_topic_id(metadata::topic_uuid(t.id));
            }
        }
        results.push(result);
    }
    let body = CreateTopicsResponse::default().with_topics(results);
    frame::response(ApiKey::CreateTopics, version, id, &body)
}

/// DeleteTopics, by name (and, from v6, by id).
pub async fn delete_topics(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    request: DeleteTopicsRequest,
) -> Response {
    let state = ctx.link.state.borrow().clone();
    // Up to v5 the names are a list of their own; from v6 each topic has a name or an id.
    let asked: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(asked.len());
    for (name, topic_id) in asked {
        let name =
            name.or_else(|| metadata::topic_by_uuid(&state, topic_id).map(|t| t.name.clone()));
        let outcome = match &name {
            None => None,
            Some(name) => Some(
                admin::topic_outcome(
                    ctx,
                    ctx.link
                        .call(AdminRequest::DeleteTopic { name: name.clone() })
                        .await,
                )
                .await,
            ),
        };
        let mut result = DeletableTopicResult::default()
            .with_name(name.map(|n| TopicName(StrBytes::from_string(n))));
        if version >= 6 {
            result = result.with_topic_id(topic_id);
        }
        result = match outcome {
            None => result.with_error_code(ResponseError::UnknownTopicId.code()),
            Some(outcome) => {
                let message = errors::message(outcome.error, &outcome.message);
                result
                    .with_error_code(errors::code(outcome.error))
                    .with_error_message(if version >= 5 { message } else { None })
            }
        };
        responses.push(result);
    }
    let body = DeleteTopicsResponse::default().with_responses(responses);
    frame::response(ApiKey::DeleteTopics, version, id, &body)
}

/// CreatePartitions: grows each topic to `count` partitions, placed by the controller.
pub async fn create_partitions(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    request: CreatePartitionsRequest,
) -> Response {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let outcome = match (u32::try_from(topic.count), &topic.assignments) {
            (_, Some(_)) => native::TopicResponse {
                error: ErrorCode::InvalidConfig,
                message: "manual replica assignments are not supported".into(),
            },
            (Err(_), None) => native::TopicResponse {
                error: ErrorCode::InvalidPartitions,
                message: format!("{} partitions", topic.count),
            },
            (Ok(_), None) if request.validate_only => native::TopicResponse {
                error: if ctx.link.state.borrow().topics.contains_key(&name) {
                    ErrorCode::None
                } else {
                    ErrorCode::UnknownTopicOrPartition
                },
                message: String::new(),
            },
            (Ok(count), None) => {
                let outcome = ctx
                    .link
                    .call(AdminRequest::AddPartitions {
                        topic: name.clone(),
                        count,
                    })
                    .await;
                admin::topic_outcome(ctx, outcome).await
            }
        };
        results.push(
            CreatePartitionsTopicResult::default()
                .with_name(topic.name)
                .with_error_code(errors::code(outcome.error))
                .with_error_message(errors::message(outcome.error, &outcome.message)),
        );
    }
    let body = CreatePartitionsResponse::default().with_results(results);
    frame::response(ApiKey::CreatePartitions, version, id, &body)
}

/// DescribeConfigs: a topic's settings under their Kafka names (`metadata::topic_config`),
/// filtered by the keys asked for; a broker has no settings to show here.
pub fn describe_configs(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    request: DescribeConfigsRequest,
) -> Response {
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match resource.resource_type {
                RESOURCE_TOPIC => {
                    let described = configs::describe_configs(
                        ctx,
                        native::DescribeConfigsRequest {
                            topic: resource.resource_name.to_string(),
                        },
                    );
                    let wanted = |key: &str| {
                        resource
                            .configuration_keys
                            .as_ref()
                            .is_none_or(|keys| keys.iter().any(|k| k.as_str() == key))
                    };
                    result
                        .with_error_code(errors::code(described.error))
                        .with_error_message(errors::message(described.error, ""))
                        .with_configs(
                            described
                                .configs
                                .into_iter()
                                .filter(|c| wanted(&c.key))
                                .map(|c| {
                                    DescribeConfigsResourceResult::default()
                                        .with_name(StrBytes::from_string(c.key))
                                        .with_value(Some(StrBytes::from_string(c.value)))
                                        .with_config_source(SOURCE_TOPIC)
                                })
                                .collect(),
                        )
                }
                RESOURCE_BROKER => result,
                _ => result.with_error_code(ResponseError::InvalidRequest.code()),
            }
        })
        .collect();
    let body = DescribeConfigsResponse::default().with_results(results);
    frame::response(ApiKey::DescribeConfigs, version, id, &body)
}

/// InitProducerId: a new producer id (epoch 0) from the shard's block, for idempotent
/// producers. A transactional id is refused: Sluice has no transactions.
pub async fn init_producer_id(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    request: InitProducerIdRequest,
) -> Response {
    let body = if request.transactional_id.is_some() {
        InitProducerIdResponse::default()
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    } else {
        let answer = admin::init_producer_id(
            ctx,
            native::InitProducerIdRequest {
                transactional_id: None,
            },
        )
        .await;
        InitProducerIdResponse::default()
            .with_error_code(errors::code(answer.error))
            .with_producer_id(ProducerId(answer.producer_id))
            .with_producer_epoch(answer.producer_epoch)
    };
    frame::response(ApiKey::InitProducerId, version, id, &body)
}
