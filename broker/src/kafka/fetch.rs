//! Fetch: the native fetch path (`server::api::fetch::read_partitions`: reads up to the high
//! watermark, long polling on min_bytes/max_wait) answered in Kafka's shape, with the batches
//! sent as the log hands them out (tail cache, DMA reads, `sendfile` spans of sealed
//! segments) between response bytes the crate encodes (`frame::records_response`).
//!
//! No fetch sessions (KIP-227): the answer's session id is 0, which tells the client to send
//! full fetch requests. Both isolation levels read up to the high watermark: there are no
//! transactions, so the last stable offset is the high watermark.

use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_protocol::native::{self, ErrorCode};
use uuid::Uuid;

use super::{errors, frame, metadata};
use crate::server::api::fetch::read_partitions;
use crate::server::context::{Response, ResponsePart, ShardContext};

/// The version from which requests and responses name topics by id.
const TOPIC_IDS_FROM: i16 = 13;
/// The first flexible version (compact fields, tagged fields).
const FLEXIBLE_FROM: i16 = 12;

fn to_u32(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

/// Where a partition's answer comes from: a read of the native fetch (its index there), or an
/// error found before reading.
enum Source {
    Read(usize),
    Refused(i16),
}

/// A topic of the request as asked: its name, its id, and each partition's source.
type AskedTopic = (TopicName, Uuid, Vec<(i32, Source)>);

pub async fn fetch(ctx: &ShardContext, version: i16, id: i32, request: FetchRequest) -> Response {
    let state = ctx.link.state.borrow().clone();
    let mut reads = native::FetchRequest {
        max_wait_ms: to_u32(request.max_wait_ms),
        min_bytes: to_u32(request.min_bytes),
        max_bytes: to_u32(request.max_bytes),
        partitions: Vec::new(),
    };
    let mut topics: Vec<AskedTopic> = Vec::new();
    for topic in &request.topics {
        let name = if version >= TOPIC_IDS_FROM {
            metadata::topic_by_uuid(&state, topic.topic_id).map(|t| t.name.clone())
        } else {
            Some(topic.topic.0.to_string())
        };
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let source = match (
                &name,
                u32::try_from(p.partition),
                u64::try_from(p.fetch_offset),
            ) {
                (None, ..) => Source::Refused(ResponseError::UnknownTopicId.code()),
                (Some(_), Err(_), _) => {
                    Source::Refused(ResponseError::UnknownTopicOrPartition.code())
                }
                (Some(_), _, Err(_)) => Source::Refused(ResponseError::OffsetOutOfRange.code()),
                (Some(name), Ok(partition), Ok(offset)) => {
                    reads.partitions.push(native::FetchPartition {
                        topic: name.clone(),
                        partition,
                        offset,
                        max_bytes: to_u32(p.partition_max_bytes),
                    });
                    Source::Read(reads.partitions.len() - 1)
                }
            };
            partitions.push((p.partition, source));
        }
        topics.push((topic.topic.clone(), topic.topic_id, partitions));
    }
    let any_refused = topics
        .iter()
        .any(|(.., ps)| ps.iter().any(|(_, s)| matches!(s, Source::Refused(_))));
    if any_refused {
        // Answer at once, as the native fetch does on an error.
        reads.max_wait_ms = 0;
    }
    let mut answers: Vec<Option<_>> = read_partitions(ctx, &reads)
        .await
        .into_iter()
        .map(Some)
        .collect();
    let mut records = Vec::new();
    let responses = topics
        .into_iter()
        .map(|(name, topic_id, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(index, source)| {
                    let data = PartitionData::default().with_partition_index(index);
                    match source {
                        Source::Refused(code) => {
                            records.push(Vec::new());
                            data.with_error_code(code)
                                .with_high_watermark(-1)
                                .with_last_stable_offset(-1)
                                .with_log_start_offset(-1)
                        }
                        Source::Read(at) => {
                            let read = answers[at].take().expect("invariant: read once");
                            let known = read.answer.error == ErrorCode::None
                                || read.answer.high_watermark > 0;
                            let (hw, start) = if known {
                                (
                                    read.answer.high_watermark as i64,
                                    read.answer.log_start as i64,
                                )
                            } else {
                                (-1, -1)
                            };
                            records.push(read.chunks.into_iter().map(ResponsePart::Send).collect());
                            data.with_error_code(errors::code(read.answer.error))
                                .with_high_watermark(hw)
                                .with_last_stable_offset(hw)
                                .with_log_start_offset(start)
                        }
                    }
                    .with_aborted_transactions(Some(Vec::new()))
                })
                .collect();
            let topic = FetchableTopicResponse::default().with_partitions(partitions);
            if version >= TOPIC_IDS_FROM {
                topic.with_topic_id(topic_id)
            } else {
                topic.with_topic(name)
            }
        })
        .collect::<Vec<_>>();
    let body = FetchResponse::default().with_responses(responses);
    let with_records = |value: Option<bytes::Bytes>| {
        let mut body = body.clone();
        for topic in &mut body.responses {
            for p in &mut topic.partitions {
                p.records = value.clone();
            }
        }
        body
    };
    frame::records_response(
        ApiKey::Fetch,
        version,
        id,
        &with_records(None),
        &with_records(Some(bytes::Bytes::new())),
        records,
        version >= FLEXIBLE_FROM,
    )
}

/// A topic name for responses.
pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}
