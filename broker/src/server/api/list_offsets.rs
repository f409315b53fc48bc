//! ListOffsets: earliest, latest (the high watermark) or by timestamp.

use sluice_protocol::native::{
    ApiKey, ErrorCode, ListOffsetsPartitionResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetQuery,
};

use crate::server::context::{storage_code, ShardContext};
use crate::storage::OffsetSpec;

pub async fn list_offsets(ctx: &ShardContext, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut partitions = Vec::with_capacity(request.partitions.len());
    for p in request.partitions {
        let mut answer = ListOffsetsPartitionResponse {
            topic: p.topic.clone(),
            partition: p.partition,
            error: ErrorCode::None,
            offset: None,
        };
        match ctx.partitions.get(&p.topic, p.partition) {
            Some(owned) if owned.leader => {
                let spec = match p.query {
                    OffsetQuery::Earliest => OffsetSpec::Earliest,
                    OffsetQuery::Latest => OffsetSpec::Latest,
                    OffsetQuery::Timestamp(ts) => OffsetSpec::Timestamp(ts),
                };
                match owned.log.list_offset(spec).await {
                    Ok(offset) => answer.offset = offset,
                    Err(error) => {
                        ctx.report_storage(&error);
                        answer.error = storage_code(&error);
                    }
                }
            }
            Some(_) => answer.error = ErrorCode::NotLeaderOrWrongShard,
            None => answer.error = ctx.missing_partition(&p.topic, p.partition),
        }
        ctx.metrics.error_code(ApiKey::ListOffsets, answer.error);
        partitions.push(answer);
    }
    ListOffsetsResponse { partitions }
}
