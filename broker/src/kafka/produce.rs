//! Produce: each partition's batch (Kafka's RecordBatch v2, which is Sluice's batch) appended
//! as sent through the native produce path (`server::api::produce::ProduceBatches`: the
//! idempotent producer's sequence check, the append, durability as `acks` asks). acks=0 gets
//! no response.

use std::rc::Rc;

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;
use sluice_protocol::native::Acks;

use super::{errors, frame, Handled};
use crate::server::api::produce::ProduceBatches;
use crate::server::context::ShardContext;

pub async fn produce(
    ctx: Rc<ShardContext>,
    version: i16,
    id: i32,
    request: ProduceRequest,
) -> Handled {
    let acks = match request.acks {
        0 => Some(Acks::None),
        1 => Some(Acks::Leader),
        -1 => Some(Acks::All),
        _ => None,
    };
    let partitions: usize = request
        .topic_data
        .iter()
        .map(|t| t.partition_data.len())
        .sum();
    let Some(acks) = acks else {
        // Nothing is appended; every partition is answered INVALID_REQUIRED_ACKS.
        let body = ProduceResponse::default().with_responses(
            request
                .topic_data
                .iter()
                .map(|t| {
                    TopicProduceResponse::default()
                        .with_name(t.name.clone())
                        .with_partition_responses(
                            t.partition_data
                                .iter()
                                .map(|p| {
                                    PartitionProduceResponse::default()
                                        .with_index(p.index)
                                        .with_error_code(ResponseError::InvalidRequiredAcks.code())
                                        .with_base_offset(-1)
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
        return super::ready(frame::response(ApiKey::Produce, version, id, &body));
    };
    let mut batches = ProduceBatches::new(acks, partitions);
    // Which results are whose: (topic index, partition index), in append order.
    let mut shape = Vec::with_capacity(partitions);
    for topic in &request.topic_data {
        for p in &topic.partition_data {
            let partition = u32::try_from(p.index).unwrap_or(u32::MAX);
            // A missing record set appends nothing and is refused by the batch validation.
            let records = p.records.as_deref().unwrap_or_default();
            batches
                .append(&ctx, topic.name.0.as_str(), partition, records)
                .await;
            shape.push(p.index);
        }
    }
    let deadline = batches.deadline(u32::try_from(request.timeout_ms).unwrap_or(0));
    glommio::spawn_local(async move {
        let results = batches.settle(&ctx, deadline).await;
        if acks == Acks::None {
            return None;
        }
        let mut results = results.into_iter().zip(shape);
        let responses = request
            .topic_data
            .iter()
            .map(|topic| {
                let partitions = results
                    .by_ref()
                    .take(topic.partition_data.len())
                    .map(|(r, index)| {
                        let ok = r.error == sluice_protocol::native::ErrorCode::None;
                        PartitionProduceResponse::default()
                            .with_index(index)
                            .with_error_code(errors::code(r.error))
                            .with_base_offset(if ok { r.base_offset as i64 } else { -1 })
                            .with_log_append_time_ms(-1)
                            .with_log_start_offset(if ok { r.log_start as i64 } else { -1 })
                            .with_error_message(if version >= 8 {
                                errors::message(r.error, "")
                            } else {
                                None
                            })
                    })
                    .collect();
                TopicProduceResponse::default()
                    .with_name(topic.name.clone())
                    .with_partition_responses(partitions)
            })
            .collect();
        let body = ProduceResponse::default().with_responses(responses);
        Some(frame::response(ApiKey::Produce, version, id, &body))
    })
    .detach()
}
