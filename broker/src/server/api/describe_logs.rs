//! DescribeLogs: what the answering shard holds of each partition replica (log start and end,
//! durable end, high watermark, size on disk), for `sluice topic describe`.

use sluice_protocol::native::{DescribeLogsRequest, DescribeLogsResponse, LogDescription};

use crate::server::context::ShardContext;

pub fn describe_logs(ctx: &ShardContext, request: DescribeLogsRequest) -> DescribeLogsResponse {
    let mut logs: Vec<LogDescription> = ctx
        .partitions
        .all()
        .into_iter()
        .filter(|((topic, _), _)| request.topics.is_empty() || request.topics.contains(topic))
        .map(|((topic, partition), owned)| LogDescription {
            topic,
            partition,
            leader: owned.leader,
            leader_epoch: owned.leader_epoch,
            log_start: owned.log.log_start(),
            log_end: owned.log.next_offset(),
            durable_end: owned.log.durable_end(),
            high_watermark: owned.log.high_watermark(),
            size_bytes: owned.log.size_bytes(),
            segments: owned.log.segment_count() as u32,
        })
        .collect();
    logs.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    DescribeLogsResponse {
        broker_id: ctx.node_id,
        shard: ctx.shard,
        logs,
    }
}
