//! ReplicaFetch, on the leader: a follower asks for its partitions from its log end on. The
//! leader checks the follower's leader epoch and that it is a replica, checks that the
//! follower's log agrees with its own up to the fetch offset (else answers where they diverge,
//! KIP-320), records the follower's progress in the partition's in-sync rules
//! (`replication::isr`), republishes the high watermark, and sends batches up to its durable
//! end through the same zero-copy read path as a consumer's fetch.

use std::time::{Duration, Instant};

use sluice_protocol::native::{
    DivergingEpoch, ErrorCode, ReplicaFetchPartition, ReplicaFetchPartitionResponse,
    ReplicaFetchRequest, ReplicaFetchResponse,
};

use super::fetch::LongPoll;
use crate::server::context::{storage_code, Response, ShardContext};
use crate::server::partitions::{now_ms, OwnedPartition};
use crate::storage::{EpochEnd, ReadBound, SendChunk};

/// Where the follower's log leaves the leader's, if it does: its last epoch must end here at or
/// after its fetch offset, in the same epoch.
fn divergence(owned: &OwnedPartition, p: &ReplicaFetchPartition) -> Option<DivergingEpoch> {
    let epoch = p.last_fetched_epoch?;
    match owned.log.end_of_epoch(epoch) {
        EpochEnd::Found {
            epoch: found,
            end_offset,
        } if found != epoch || end_offset < p.fetch_offset => Some(DivergingEpoch {
            epoch: found,
            end_offset,
        }),
        EpochEnd::Found { .. } => None,
        // The leader holds no epoch at or below the follower's: nothing in common beyond the
        // leader's log start.
        EpochEnd::Unknown => Some(DivergingEpoch {
            epoch,
            end_offset: owned.log.log_start(),
        }),
    }
}

pub async fn replica_fetch(ctx: &ShardContext, id: u32, request: ReplicaFetchRequest) -> Response {
    let deadline = Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
    let replica = request.replica_id;
    loop {
        let mut listeners = Vec::new();
        let mut answers = Vec::with_capacity(request.partitions.len());
        let mut data: Vec<SendChunk> = Vec::new();
        let mut total = 0usize;
        let mut sent = Vec::new();
        let mut final_answer = false;
        for p in &request.partitions {
            let mut answer = ReplicaFetchPartitionResponse {
                topic: p.topic.clone(),
                partition: p.partition,
                error: ErrorCode::None,
                leader_epoch: 0,
                high_watermark: 0,
                log_start: 0,
                durable_end: 0,
                diverging: None,
                bytes_len: 0,
            };
            let owned = match ctx.partitions.get(&p.topic, p.partition) {
                Some(owned) if owned.leader => owned,
                Some(_) => {
                    answer.error = ErrorCode::NotLeaderOrWrongShard;
                    answers.push(answer);
                    final_answer = true;
                    continue;
                }
                None => {
                    answer.error = ctx.missing_partition(&p.topic, p.partition);
                    answers.push(answer);
                    final_answer = true;
                    continue;
                }
            };
            answer.leader_epoch = owned.leader_epoch;
            let Some(followers) = owned.followers.clone() else {
                answer.error = ErrorCode::NotLeaderOrWrongShard;
                answers.push(answer);
                final_answer = true;
                continue;
            };
            answer.error = if p.leader_epoch < owned.leader_epoch {
                ErrorCode::FencedLeaderEpoch
            } else if p.leader_epoch > owned.leader_epoch {
                ErrorCode::UnknownLeaderEpoch
            } else if !followers.borrow().is_follower(replica) {
                ErrorCode::NotReplica
            } else {
                ErrorCode::None
            };
            if answer.error != ErrorCode::None {
                answers.push(answer);
                final_answer = true;
                continue;
            }
            let log = &owned.log;
            answer.log_start = log.log_start();
            if p.fetch_offset < log.log_start() {
                // Behind this log's start (retention deleted what it needs): whatever its
                // epochs, the follower can only start again here (`log_start` in the answer).
                answer.error = ErrorCode::OffsetOutOfRange;
                answers.push(answer);
                final_answer = true;
                continue;
            }
            if let Some(diverging) = divergence(&owned, p) {
                answer.diverging = Some(diverging);
                answer.high_watermark = log.high_watermark();
                answer.durable_end = log.durable_end();
                answers.push(answer);
                final_answer = true;
                continue;
            }
            // "Caught up" is measured against what a follower can fetch: the leader's durable
            // end (unflushed appends are not served).
            followers.borrow_mut().on_fetch(
                replica,
                p.fetch_offset,
                p.durable_end,
                log.durable_end(),
                now_ms(),
            );
            owned.refresh_high_watermark(ctx.node_id);
            listeners.push(log.durable_end_changed());
            answer.high_watermark = log.high_watermark();
            answer.durable_end = log.durable_end();
            let budget = (request.max_bytes as usize)
                .saturating_sub(total)
                .min(p.max_bytes as usize);
            if p.fetch_offset < log.durable_end() && (budget > 0 || total == 0) {
                match log
                    .read_for_send_to(p.fetch_offset, budget.max(1), ReadBound::DurableEnd)
                    .await
                {
                    Ok(read) => {
                        let len = read.len_bytes();
                        answer.bytes_len = len as u32;
                        total += len;
                        sent.push((std::rc::Rc::clone(&owned.counters), len));
                        data.extend(read.chunks);
                    }
                    Err(error) => {
                        ctx.report_storage(&error);
                        answer.error = storage_code(&error);
                        final_answer = true;
                    }
                }
            } else if p.fetch_offset > log.durable_end() || p.fetch_offset < log.log_start() {
                answer.error = ErrorCode::OffsetOutOfRange;
                final_answer = true;
            }
            answers.push(answer);
        }
        let answer_now = final_answer || total >= request.min_bytes.max(1) as usize;
        let control = ReplicaFetchResponse {
            partitions: answers,
        };
        let round = LongPoll {
            id,
            total,
            deadline,
        };
        if let Some(response) = round
            .answer_or_wait(answer_now, &control, data, listeners)
            .await
        {
            for (counters, len) in sent {
                counters.replica_fetched(len as u64);
            }
            for p in &control.partitions {
                ctx.metrics
                    .error_code(sluice_protocol::native::ApiKey::ReplicaFetch, p.error);
            }
            return response;
        }
    }
}
