//! Fetch: whole batches from each partition's log up to its high watermark, sent from the tail
//! cache, a DMA read of the active segment or a `sendfile` span of a sealed one; long polling
//! on the logs' durable-end listeners.

use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use sluice_protocol::native::{
    encode_control, encode_response_head, ApiKey, EncodeControl, ErrorCode, FetchPartitionResponse,
    FetchRequest, FetchResponse, FrameError,
};

use crate::notify::Listener;
use crate::server::context::{storage_code, Response, ShardContext};
use crate::storage::SendChunk;

/// Completes when any of the listeners fires.
#[derive(Debug)]
struct AnyListener(Vec<Listener>);

impl std::future::Future for AnyListener {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        for listener in &mut self.0 {
            if std::pin::Pin::new(listener).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    }
}

pub async fn fetch(ctx: &ShardContext, id: u32, request: FetchRequest) -> Response {
    let deadline = Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
    loop {
        let mut listeners = Vec::new();
        let mut sent = Vec::new();
        let mut answers = Vec::with_capacity(request.partitions.len());
        let mut data: Vec<SendChunk> = Vec::new();
        let mut total = 0usize;
        let mut failed = false;
        for p in &request.partitions {
            let mut answer = FetchPartitionResponse {
                topic: p.topic.clone(),
                partition: p.partition,
                error: ErrorCode::None,
                high_watermark: 0,
                log_start: 0,
                bytes_len: 0,
            };
            match ctx.partitions.get(&p.topic, p.partition) {
                Some(owned) if owned.leader => {
                    listeners.push(owned.log.durable_end_changed());
                    let budget = (request.max_bytes as usize)
                        .saturating_sub(total)
                        .min(p.max_bytes as usize);
                    if budget == 0 && total > 0 {
                        answer.high_watermark = owned.log.high_watermark();
                        answer.log_start = owned.log.log_start();
                    } else {
                        match owned.log.read_for_send(p.offset, budget.max(1)).await {
                            Ok(read) => {
                                answer.high_watermark = read.high_watermark;
                                answer.log_start = read.log_start;
                                let len = read.len_bytes();
                                answer.bytes_len = len as u32;
                                total += len;
                                sent.push((std::rc::Rc::clone(&owned.counters), len));
                                data.extend(read.chunks);
                            }
                            Err(error) => {
                                ctx.report_storage(&error);
                                answer.error = storage_code(&error);
                                answer.high_watermark = owned.log.high_watermark();
                                answer.log_start = owned.log.log_start();
                                failed = true;
                            }
                        }
                    }
                }
                Some(_) => {
                    answer.error = ErrorCode::NotLeaderOrWrongShard;
                    failed = true;
                }
                None => {
                    answer.error = ctx.missing_partition(&p.topic, p.partition);
                    failed = true;
                }
            }
            answers.push(answer);
        }
        let answer_now = failed || total >= request.min_bytes as usize;
        let control = FetchResponse {
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
                counters.fetched(len as u64);
            }
            for p in &control.partitions {
                ctx.metrics.error_code(ApiKey::Fetch, p.error);
            }
            return response;
        }
    }
}

/// One round of a long-polling fetch (consumer or replica).
#[derive(Debug)]
pub struct LongPoll {
    pub id: u32,
    /// Bytes of batches this round found.
    pub total: usize,
    pub deadline: Instant,
}

impl LongPoll {
    /// Answers now when asked to (an error, enough bytes), at the deadline or with nothing to
    /// wait on; otherwise waits until a listener fires (a flush moved a durable end or high
    /// watermark) or the deadline passes, and returns `None`: read again.
    pub async fn answer_or_wait<T: EncodeControl>(
        &self,
        answer_now: bool,
        control: &T,
        data: Vec<SendChunk>,
        listeners: Vec<Listener>,
    ) -> Option<Response> {
        let now = Instant::now();
        if answer_now || now >= self.deadline || listeners.is_empty() {
            let control = encode_control(control);
            return Some(Response {
                head: encode_response_head(self.id, FrameError::None, &control, self.total),
                data,
            });
        }
        let wait = self.deadline - now;
        AnyListener(listeners)
            .or(async {
                glommio::timer::sleep(wait).await;
            })
            .await;
        None
    }
}
