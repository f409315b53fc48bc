//! Produce: each partition's batch goes through the partition's producer state and log (check,
//! append, record as one step), in the connection's reader so a connection's batches keep their
//! order and a full write buffer stops the reader (backpressure); a task then waits for
//! durability and answers.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use glommio::task::JoinHandle;
use sluice_protocol::native::{
    Acks, ApiKey, ErrorCode, FrameDecodeError, ProducePartitionResponse, ProduceRequest,
    ProduceResponse,
};

use super::DispatchError;
use crate::server::context::{response, storage_code, Response, ShardContext};
use crate::server::producers::ProduceOutcome;
use crate::storage::Appended;

pub async fn produce(
    ctx: Rc<ShardContext>,
    id: u32,
    request: ProduceRequest,
    data: &[u8],
) -> Result<JoinHandle<Option<Response>>, DispatchError> {
    let declared: u64 = request
        .partitions
        .iter()
        .map(|p| u64::from(p.batch_len))
        .sum();
    if declared != data.len() as u64 {
        return Err(DispatchError::Malformed(FrameDecodeError::ControlOverrun {
            control: declared as usize,
            len: data.len(),
        }));
    }
    let mut batches = ProduceBatches::new(request.acks, request.partitions.len());
    let mut at = 0usize;
    for p in &request.partitions {
        let batch = &data[at..at + p.batch_len as usize];
        at += p.batch_len as usize;
        batches.append(&ctx, &p.topic, p.partition, batch).await;
    }
    let deadline = batches.deadline(request.timeout_ms);
    let acks = request.acks;
    Ok(glommio::spawn_local(async move {
        let partitions = batches.settle(&ctx, deadline).await;
        if acks == Acks::None {
            return None;
        }
        Some(response(id, &ProduceResponse { partitions }))
    })
    .detach())
}

/// A batch appended and waiting to be durable: its result's index, its log, its offsets and
/// the leader epoch it was appended at.
type Wait = (usize, crate::storage::PartitionLog, Appended, u32);

/// One produce request's batches: appended one by one in the connection's reader (so they keep
/// the connection's order and a full write buffer stops the reader), then settled in a task
/// that waits until each is durable as `acks` asks. The native and the Kafka produce share it.
#[derive(Debug)]
pub struct ProduceBatches {
    acks: Acks,
    results: Vec<ProducePartitionResponse>,
    waits: Vec<Wait>,
}

impl ProduceBatches {
    pub fn new(acks: Acks, partitions: usize) -> ProduceBatches {
        ProduceBatches {
            acks,
            results: Vec::with_capacity(partitions),
            waits: Vec::new(),
        }
    }

    /// One deadline for the whole request, however many batches it carries: the client's own
    /// timeout covers the request, not each batch.
    pub fn deadline(&self, timeout_ms: u32) -> Instant {
        Instant::now() + Duration::from_millis(u64::from(timeout_ms.max(1)))
    }

    /// Checks and appends one partition's batch (or records why not).
    pub async fn append(&mut self, ctx: &ShardContext, topic: &str, partition: u32, batch: &[u8]) {
        let mut result = ProducePartitionResponse {
            topic: topic.to_string(),
            partition,
            error: ErrorCode::None,
            base_offset: 0,
            log_start: 0,
        };
        match ctx.partitions.get(topic, partition) {
            Some(owned)
                if owned.leader
                    && self.acks == Acks::All
                    && (owned.in_sync().len() as u32) < owned.min_insync =>
            {
                // Below the topic's in-sync minimum: refused before anything is appended.
                result.error = ErrorCode::NotEnoughReplicas;
            }
            Some(owned) if owned.leader => {
                match owned
                    .producers
                    .append(&owned.log, batch, owned.leader_epoch)
                    .await
                {
                    Ok(ProduceOutcome::Appended(appended)) => {
                        owned.counters.produced(
                            appended.last_offset - appended.base_offset + 1,
                            batch.len() as u64,
                        );
                        result.base_offset = appended.base_offset;
                        result.log_start = owned.log.log_start();
                        self.waits.push((
                            self.results.len(),
                            owned.log.clone(),
                            appended,
                            owned.leader_epoch,
                        ));
                    }
                    Ok(ProduceOutcome::Duplicate { base_offset }) => {
                        // A retry of a batch already written: answer with its offset once it
                        // is durable (the first attempt may still be waiting for its flush).
                        result.base_offset = base_offset;
                        result.log_start = owned.log.log_start();
                        let appended = Appended {
                            base_offset,
                            last_offset: base_offset,
                        };
                        self.waits.push((
                            self.results.len(),
                            owned.log.clone(),
                            appended,
                            owned.leader_epoch,
                        ));
                    }
                    Ok(ProduceOutcome::OutOfOrder) => result.error = ErrorCode::OutOfOrderSequence,
                    Ok(ProduceOutcome::Fenced) => result.error = ErrorCode::ProducerFenced,
                    Err(error) => {
                        ctx.report_storage(&error);
                        result.error = storage_code(&error);
                    }
                }
            }
            Some(_) => result.error = ErrorCode::NotLeaderOrWrongShard,
            None => result.error = ctx.missing_partition(topic, partition),
        }
        self.results.push(result);
    }

    /// Waits until every appended batch is durable as `acks` asks (or the deadline passes)
    /// and returns each partition's result, in request order.
    pub async fn settle(
        self,
        ctx: &ShardContext,
        deadline: Instant,
    ) -> Vec<ProducePartitionResponse> {
        let ProduceBatches {
            acks,
            mut results,
            waits,
        } = self;
        for (index, log, appended, epoch) in waits {
            let (topic, partition) = (&results[index].topic, results[index].partition);
            let still_leading = || {
                ctx.partitions
                    .get(topic, partition)
                    .is_some_and(|o| o.leader && o.leader_epoch == epoch)
            };
            let durable = async {
                log.wait_durable(appended).await?;
                if acks == Acks::All {
                    // Durable on every in-sync replica: below the high watermark.
                    wait_high_watermark(&log, appended.last_offset, still_leading).await?;
                }
                Ok(())
            };
            let durable = async { Some(durable.await) }.or(async {
                glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
                None
            });
            match durable.await {
                Some(Ok(())) => {}
                Some(Err(error)) => {
                    ctx.report_storage(&error);
                    results[index].error = storage_code(&error);
                }
                None => results[index].error = ErrorCode::Timeout,
            }
        }
        for r in &results {
            ctx.metrics.error_code(ApiKey::Produce, r.error);
        }
        results
    }
}

/// Waits until the log's high watermark passes `last_offset` (every in-sync replica has it
/// durable), or the log fails or closes, or this replica stops leading at the epoch the batch
/// was appended in: a deposed leader's high watermark comes from the new leader, whose log
/// may hold other batches at these offsets, so it answers `NotLeaderOrWrongShard` and the
/// client retries at the new leader (an idempotent batch already there is not written twice).
pub(crate) async fn wait_high_watermark(
    log: &crate::storage::PartitionLog,
    last_offset: u64,
    still_leading: impl Fn() -> bool,
) -> Result<(), crate::storage::StorageError> {
    loop {
        let moved = log.durable_end_changed();
        if !still_leading() {
            return Err(crate::storage::StorageError::Closed);
        }
        if log.high_watermark() > last_offset {
            return Ok(());
        }
        // A closed or failed log answers with its error.
        log.wait_durable(Appended {
            base_offset: last_offset,
            last_offset,
        })
        .await?;
        moved.await;
    }
}
