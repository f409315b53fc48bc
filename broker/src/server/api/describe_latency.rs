//! DescribeLatency: the answering shard's exact latency distributions (produce requests in the
//! broker, device time of each flush), for `sluice-bench` to set beside what its client saw.

use sluice_protocol::native::{DescribeLatencyRequest, DescribeLatencyResponse};

use crate::metrics::latency::with_flush_device;
use crate::server::context::ShardContext;

pub fn describe_latency(
    ctx: &ShardContext,
    _request: DescribeLatencyRequest,
) -> DescribeLatencyResponse {
    DescribeLatencyResponse {
        broker_id: ctx.node_id,
        shard: ctx.shard,
        produce: ctx.metrics.produce_latency.buckets(),
        flush_device: with_flush_device(|r| r.buckets()),
    }
}
