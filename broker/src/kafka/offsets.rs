//! ListOffsets: earliest (-2), latest (-1, the high watermark) or the first offset at or after
//! a timestamp, through the native handler (`server::api::list_offsets`).

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ApiKey, ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;
use sluice_protocol::native::{self, OffsetQuery};

use super::{errors, frame};
use crate::server::api::list_offsets::list_offsets as native_list_offsets;
use crate::server::context::{Response, ShardContext};

/// Kafka's special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

pub async fn list_offsets(
    ctx: &ShardContext,
    version: i16,
    id: i32,
    request: ListOffsetsRequest,
) -> Response {
    let mut asked = native::ListOffsetsRequest {
        partitions: Vec::new(),
    };
    // Per partition: its index in the native request, or the error found before asking.
    let mut shape: Vec<Vec<(i32, Result<usize, i16>)>> = Vec::new();
    for topic in &request.topics {
        let mut partitions = Vec::new();
        for p in &topic.partitions {
            let query = match p.timestamp {
                LATEST => Some(OffsetQuery::Latest),
                EARLIEST => Some(OffsetQuery::Earliest),
                ts if ts >= 0 => Some(OffsetQuery::Timestamp(ts)),
                _ => None,
            };
            let slot = match (query, u32::try_from(p.partition_index)) {
                (Some(query), Ok(partition)) => {
                    asked.partitions.push(native::ListOffsetsPartition {
                        topic: topic.name.0.to_string(),
                        partition,
                        query,
                    });
                    Ok(asked.partitions.len() - 1)
                }
                (None, _) => Err(ResponseError::InvalidRequest.code()),
                (_, Err(_)) => Err(ResponseError::UnknownTopicOrPartition.code()),
            };
            partitions.push((p.partition_index, slot));
        }
        shape.push(partitions);
    }
    let answers = native_list_offsets(ctx, asked).await.partitions;
    let topics = request
        .topics
        .iter()
        .zip(shape)
        .map(|(topic, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(index, slot)| {
                    let answer = ListOffsetsPartitionResponse::default()
                        .with_partition_index(index)
                        .with_timestamp(-1)
                        .with_offset(-1);
                    match slot {
                        Err(code) => answer.with_error_code(code),
                        Ok(at) => {
                            let found = &answers[at];
                            answer
                                .with_error_code(errors::code(found.error))
                                .with_offset(found.offset.map_or(-1, |o| o as i64))
                        }
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    let body = ListOffsetsResponse::default().with_topics(topics);
    frame::response(ApiKey::ListOffsets, version, id, &body)
}
