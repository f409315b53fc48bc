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
use crate::server::context::{storage_code, Response, ResponsePart, ShardContext};
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
    let reads = read_partitions(ctx, &request).await;
    let total: usize = reads.iter().map(|r| r.answer.bytes_len as usize).sum();
    let mut partitions = Vec::with_capacity(reads.len());
    let mut data = Vec::new();
    for read in reads {
        partitions.push(read.answer);
        data.extend(read.chunks.into_iter().map(ResponsePart::Send));
    }
    let control = encode_control(&FetchResponse { partitions });
    Response {
        head: encode_response_head(id, FrameError::None, &control, total),
        data,
    }
}

/// What a fetch found in one partition: its answer (`bytes_len` is the length of `chunks`)
/// and the batches to send, as memory chunks and file spans.
#[derive(Debug)]
pub struct PartitionRead {
    pub answer: FetchPartitionResponse,
    pub chunks: Vec<SendChunk>,
}

/// Reads every partition of a fetch, long polling: answers at once on an error or with
/// `min_bytes`, else waits on the logs' durable-end listeners until enough arrived or
/// `max_wait_ms` passed. The native and the Kafka fetch share it.
pub async fn read_partitions(ctx: &ShardContext, request: &FetchRequest) -> Vec<PartitionRead> {
    let deadline = Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
    loop {
        let mut listeners = Vec::new();
        let mut sent = Vec::new();
        let mut reads = Vec::with_capacity(request.partitions.len());
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
            let mut chunks = Vec::new();
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
                                chunks = read.chunks;
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
            reads.push(PartitionRead { answer, chunks });
        }
        let answer_now = failed || total >= request.min_bytes as usize;
        let round = LongPoll {
            id: 0,
            total,
            deadline,
        };
        if round.answer_now(answer_now, &listeners) {
            for (counters, len) in sent {
                counters.fetched(len as u64);
            }
            for r in &reads {
                ctx.metrics.error_code(ApiKey::Fetch, r.answer.error);
            }
            return reads;
        }
        round.wait(listeners).await;
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
    /// Whether to answer now: when asked to (an error, enough bytes), at the deadline, or with
    /// nothing to wait on.
    pub fn answer_now(&self, asked: bool, listeners: &[Listener]) -> bool {
        asked || Instant::now() >= self.deadline || listeners.is_empty()
    }

    /// Waits until a listener fires (a flush moved a durable end or high watermark) or the
    /// deadline passes.
    pub async fn wait(&self, listeners: Vec<Listener>) {
        let wait = self.deadline.saturating_duration_since(Instant::now());
        AnyListener(listeners)
            .or(async {
                glommio::timer::sleep(wait).await;
            })
            .await;
    }

    /// Answers now when [`Self::answer_now`] says so; otherwise waits ([`Self::wait`]) and
    /// returns `None`: read again.
    pub async fn answer_or_wait<T: EncodeControl>(
        &self,
        answer_now: bool,
        control: &T,
        data: Vec<SendChunk>,
        listeners: Vec<Listener>,
    ) -> Option<Response> {
        if self.answer_now(answer_now, &listeners) {
            let control = encode_control(control);
            return Some(Response {
                head: encode_response_head(self.id, FrameError::None, &control, self.total),
                data: data.into_iter().map(ResponsePart::Send).collect(),
            });
        }
        self.wait(listeners).await;
        None
    }
}
