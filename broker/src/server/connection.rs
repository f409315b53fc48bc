//! One client connection on a shard: reading frames, dispatching requests, writing responses in
//! request order.
//!
//! The reader handles frames one after another. Produce appends happen in the reader (so a
//! connection's batches reach each log in the order they were sent, and a full write buffer
//! stops the reader: backpressure reaches the producer as a socket that is not read). Waiting for
//! durability, long-poll fetches and everything else run as tasks whose responses a writer task
//! sends back in request order. At most `IN_FLIGHT_REQUESTS_MAX` requests are in flight per
//! connection, and the bytes of frames being handled count against the shard's
//! `SHARD_BUFFERED_BYTES_MAX`.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::io::AsyncWriteExt;
use futures_lite::FutureExt;
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use glommio::task::JoinHandle;
use sluice_protocol::native::{
    decode_control, encode_control, encode_response_head, split_request, Acks, ApiKey, ApiRange,
    ApiVersionsResponse, BrokerInfo, CreateTopicRequest, DeleteTopicRequest, EncodeControl,
    ErrorCode, FetchPartitionResponse, FetchRequest, FetchResponse, FrameDecodeError, FrameError,
    InitProducerIdRequest, InitProducerIdResponse, ListOffsetsPartitionResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetQuery,
    PartitionMetadata, ProducePartitionResponse, ProduceRequest, ProduceResponse, RequestHeader,
    TopicMetadata, TopicResponse,
};
use sluice_protocol::BatchError;

use super::producers::ProduceOutcome;

use super::partitions::SharedPartitions;
use super::socket::{Watch, WatchStats};
use super::MetadataLink;
use crate::limits::{FRAME_BYTES_MAX, IN_FLIGHT_REQUESTS_MAX};
use crate::metadata::types::BrokerState;
use crate::metadata::{AdminReply, AdminRequest, MetadataError, NodeId};
use crate::notify::{Listener, Notify};
use crate::storage::{Appended, OffsetSpec, SendChunk, StorageError};

/// What every connection of a shard shares.
#[derive(Debug)]
pub struct ShardContext {
    pub node_id: NodeId,
    pub shard: u32,
    pub topic_defaults: crate::metadata::types::TopicConfig,
    pub partitions: SharedPartitions,
    pub link: MetadataLink,
    /// Bytes of request frames being handled on this shard.
    pub buffered: Rc<Semaphore>,
    /// Fired when the shard stops: connections finish in-flight work and close.
    pub stop: Notify,
    /// Fired when a log fails: the broker must stop.
    pub storage_failed: Notify,
    /// This shard's unused block of producer ids: [next, end).
    pub producer_ids: std::cell::Cell<(u64, u64)>,
    /// How long a connection waits on its socket before checking it itself (`socket.rs`).
    pub socket_watch: Duration,
    /// Lost socket readiness events recovered on this shard.
    pub watch_stats: Rc<WatchStats>,
    /// The shard's task queue for fetches (`shard::TaskQueues`).
    pub bulk: glommio::TaskQueueHandle,
}

/// A response: header and control, then the data chunks written as they are.
#[derive(Debug, Default)]
struct Response {
    head: Vec<u8>,
    data: Vec<SendChunk>,
}

fn response<T: EncodeControl>(correlation_id: u32, control: &T) -> Response {
    let control = encode_control(control);
    Response {
        head: encode_response_head(correlation_id, FrameError::None, &control, 0),
        data: Vec::new(),
    }
}

fn frame_error(correlation_id: u32, error: FrameError) -> Response {
    Response {
        head: encode_response_head(correlation_id, error, &[], 0),
        data: Vec::new(),
    }
}

/// Maps a storage error on a produce or fetch to the client's error code.
fn storage_code(error: &StorageError) -> ErrorCode {
    match error {
        StorageError::InvalidBatch(BatchError::TooLarge { .. }) => ErrorCode::BatchTooLarge,
        StorageError::InvalidBatch(BatchError::CrcMismatch { .. }) => ErrorCode::CorruptBatch,
        StorageError::InvalidBatch(_) => ErrorCode::InvalidBatch,
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        StorageError::NotContiguous { .. } => ErrorCode::InvalidBatch,
        // The log holds a newer epoch than this shard's view of the leadership: stale.
        StorageError::Closed | StorageError::EpochRegression(_) => ErrorCode::NotLeaderOrWrongShard,
        StorageError::Io { .. }
        | StorageError::Corrupt { .. }
        | StorageError::Failed(_)
        | StorageError::Config(_) => ErrorCode::StorageFailure,
    }
}

fn metadata_code(error: &MetadataError) -> ErrorCode {
    match error {
        MetadataError::TopicExists(_) => ErrorCode::TopicExists,
        MetadataError::InvalidTopicName { .. } => ErrorCode::InvalidTopic,
        MetadataError::InvalidPartitionCount { .. } => ErrorCode::InvalidPartitions,
        MetadataError::ReplicationFactorTooLarge { .. } => ErrorCode::InvalidReplicationFactor,
        MetadataError::UnknownTopic(_) => ErrorCode::UnknownTopicOrPartition,
        MetadataError::InvalidConfig(_) => ErrorCode::InvalidConfig,
        MetadataError::NotController { .. } => ErrorCode::NotController,
        MetadataError::UnknownPartition { .. } => ErrorCode::UnknownTopicOrPartition,
        MetadataError::FencedLeaderEpoch { .. } | MetadataError::StalePartitionEpoch { .. } => {
            ErrorCode::NotLeaderOrWrongShard
        }
        MetadataError::InvalidInSync(_) => ErrorCode::InvalidConfig,
        MetadataError::UnknownBroker(_)
        | MetadataError::NoLiveBrokers
        | MetadataError::Unavailable(_)
        | MetadataError::Malformed(_) => ErrorCode::Unavailable,
    }
}

impl ShardContext {
    /// The error for a partition this shard does not serve.
    fn missing_partition(&self, topic: &str, partition: u32) -> ErrorCode {
        let state = self.link.state.borrow().clone();
        match state.topics.get(topic) {
            Some(t) if (partition as usize) < t.partitions.len() => {
                ErrorCode::NotLeaderOrWrongShard
            }
            _ => ErrorCode::UnknownTopicOrPartition,
        }
    }

    fn report_storage(&self, error: &StorageError) {
        if error.is_environmental() {
            tracing::error!(%error, shard = self.shard, "storage failed");
            self.storage_failed.notify();
        }
    }
}

/// Serves one connection until the client closes it, the framing breaks, or the shard stops.
pub async fn serve(ctx: Rc<ShardContext>, stream: TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "set_nodelay");
    }
    let watch = Watch::new(
        stream.as_raw_fd(),
        ctx.socket_watch,
        Rc::clone(&ctx.watch_stats),
    );
    if let Err(error) = watch.set_nonblocking() {
        tracing::debug!(%error, "cannot make the socket non-blocking");
        return;
    }
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (pending_tx, pending_rx) =
        local_channel::new_bounded::<JoinHandle<Option<Response>>>(IN_FLIGHT_REQUESTS_MAX);
    let writer_watch = watch.clone();
    let writer_task = glommio::spawn_local(async move {
        let watch = writer_watch;
        while let Some(task) = pending_rx.recv().await {
            let Some(Some(response)) = task.await else {
                continue;
            };
            if watch.write_all(&mut writer, &response.head).await.is_err() {
                return;
            }
            for chunk in &response.data {
                let sent = match chunk {
                    SendChunk::Memory(bytes) => {
                        watch.write_all(&mut writer, bytes.as_bytes()).await
                    }
                    SendChunk::File(range) => {
                        watch
                            .send_file(range.file.as_raw_fd(), range.position, range.len)
                            .await
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
            if writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.close().await;
    })
    .detach();

    loop {
        let stop: Listener = ctx.stop.listen();
        let mut len_bytes = [0u8; 4];
        let read = async { Some(watch.read_exact(&mut reader, &mut len_bytes).await) }.or(async {
            stop.await;
            None
        });
        match read.await {
            Some(Ok(())) => {}
            Some(Err(_)) | None => break,
        }
        let frame_len = u32::from_le_bytes(len_bytes) as usize;
        if !(12..=FRAME_BYTES_MAX).contains(&frame_len) {
            // The framing itself is broken: say so and close.
            let task =
                glommio::spawn_local(
                    async move { Some(frame_error(0, FrameError::FrameTooLarge)) },
                )
                .detach();
            let _ = pending_tx.send(task).await;
            break;
        }
        let Ok(permit) = ctx.buffered.acquire_static_permit(frame_len as u64).await else {
            break;
        };
        let mut frame = vec![0u8; frame_len];
        if watch.read_exact(&mut reader, &mut frame).await.is_err() {
            break;
        }
        let task = match split_request(&frame) {
            Err(_) => {
                glommio::spawn_local(
                    async move { Some(frame_error(0, FrameError::MalformedControl)) },
                )
                .detach()
            }
            Ok(parsed) => {
                let header = parsed.header;
                match dispatch(&ctx, header, parsed.control, parsed.data).await {
                    Ok(task) => task,
                    Err(error) => {
                        let code = match error {
                            DispatchError::UnsupportedApi => FrameError::UnsupportedApi,
                            DispatchError::UnsupportedVersion => FrameError::UnsupportedVersion,
                            DispatchError::Malformed(error) => {
                                tracing::debug!(%error, "malformed request");
                                FrameError::MalformedControl
                            }
                        };
                        let id = header.correlation_id;
                        glommio::spawn_local(async move { Some(frame_error(id, code)) }).detach()
                    }
                }
            }
        };
        drop(frame);
        drop(permit);
        if pending_tx.send(task).await.is_err() {
            break;
        }
    }
    drop(pending_tx);
    let _ = writer_task.await;
}

#[derive(Debug)]
enum DispatchError {
    UnsupportedApi,
    UnsupportedVersion,
    Malformed(FrameDecodeError),
}

impl From<FrameDecodeError> for DispatchError {
    fn from(error: FrameDecodeError) -> Self {
        DispatchError::Malformed(error)
    }
}

/// Decodes one request and starts handling it; returns the task that yields its response.
async fn dispatch(
    ctx: &Rc<ShardContext>,
    header: RequestHeader,
    control: &[u8],
    data: &[u8],
) -> Result<JoinHandle<Option<Response>>, DispatchError> {
    let api = ApiKey::from_u16(header.api_key).ok_or(DispatchError::UnsupportedApi)?;
    let (min, max) = api.versions();
    if header.api_version < min || header.api_version > max {
        return Err(DispatchError::UnsupportedVersion);
    }
    let id = header.correlation_id;
    let ctx = Rc::clone(ctx);
    Ok(match api {
        ApiKey::ApiVersions => {
            let body = ApiVersionsResponse {
                apis: ApiKey::ALL
                    .iter()
                    .map(|k| ApiRange {
                        key: *k as u16,
                        min: k.versions().0,
                        max: k.versions().1,
                    })
                    .collect(),
                broker_id: ctx.node_id,
                shard: ctx.shard,
            };
            glommio::spawn_local(async move { Some(response(id, &body)) }).detach()
        }
        ApiKey::Metadata => {
            let request: MetadataRequest = decode_control(control)?;
            glommio::spawn_local(async move { Some(response(id, &metadata(&ctx, request))) })
                .detach()
        }
        ApiKey::CreateTopic => {
            let request: CreateTopicRequest = decode_control(control)?;
            glommio::spawn_local(async move {
                let outcome = ctx
                    .link
                    .call(AdminRequest::CreateTopic {
                        name: request.name,
                        partitions: request.partitions,
                        replication_factor: request.replication_factor,
                        config: Some(ctx.topic_defaults.clone()),
                    })
                    .await;
                Some(response(id, &topic_outcome(&ctx, outcome).await))
            })
            .detach()
        }
        ApiKey::DeleteTopic => {
            let request: DeleteTopicRequest = decode_control(control)?;
            glommio::spawn_local(async move {
                let outcome = ctx
                    .link
                    .call(AdminRequest::DeleteTopic { name: request.name })
                    .await;
                Some(response(id, &topic_outcome(&ctx, outcome).await))
            })
            .detach()
        }
        ApiKey::Produce => {
            let request: ProduceRequest = decode_control(control)?;
            produce(ctx, id, request, data).await?
        }
        ApiKey::Fetch => {
            let request: FetchRequest = decode_control(control)?;
            let bulk = ctx.bulk;
            super::shard::spawn_into(bulk, async move { Some(fetch(&ctx, id, request).await) })
                .detach()
        }
        ApiKey::InitProducerId => {
            let request: InitProducerIdRequest = decode_control(control)?;
            glommio::spawn_local(async move {
                Some(response(id, &init_producer_id(&ctx, request).await))
            })
            .detach()
        }
        ApiKey::ListOffsets => {
            let request: ListOffsetsRequest = decode_control(control)?;
            glommio::spawn_local(
                async move { Some(response(id, &list_offsets(&ctx, request).await)) },
            )
            .detach()
        }
    })
}

fn metadata(ctx: &ShardContext, request: MetadataRequest) -> MetadataResponse {
    let state = ctx.link.state.borrow().clone();
    let brokers = state
        .brokers
        .values()
        .map(|b| BrokerInfo {
            id: b.id,
            address: b.address.clone(),
            shard_addresses: b.shard_addresses.clone(),
            alive: b.state == BrokerState::Alive,
        })
        .collect();
    let names: Vec<String> = match request.topics {
        Some(names) => names,
        None => state.topics.keys().cloned().collect(),
    };
    let topics = names
        .into_iter()
        .map(|name| match state.topics.get(&name) {
            None => TopicMetadata {
                name,
                error: ErrorCode::UnknownTopicOrPartition,
                partitions: Vec::new(),
            },
            Some(topic) => TopicMetadata {
                name,
                error: ErrorCode::None,
                partitions: topic
                    .partitions
                    .iter()
                    .enumerate()
                    .map(|(i, p)| PartitionMetadata {
                        partition: i as u32,
                        leader: p.leader,
                        leader_epoch: p.leader_epoch,
                        shard: p
                            .leader
                            .and_then(|l| p.replicas.iter().find(|r| r.broker == l))
                            .map_or(0, |r| r.shard),
                        replicas: p.replicas.iter().map(|r| r.broker).collect(),
                        in_sync: p.in_sync.clone(),
                    })
                    .collect(),
            },
        })
        .collect();
    MetadataResponse {
        version: state.version,
        controller: None,
        brokers,
        topics,
    }
}

/// Waits (bounded) until this broker has applied the change, so the client's next metadata
/// request sees it, and turns the outcome into a response.
async fn topic_outcome(
    ctx: &ShardContext,
    outcome: Result<AdminReply, MetadataError>,
) -> TopicResponse {
    match outcome {
        Ok(AdminReply::TopicCreated { version, .. }) | Ok(AdminReply::Done { version }) => {
            let mut state = ctx.link.state.clone();
            let deadline = Instant::now() + Duration::from_secs(5);
            while state.borrow().version < version && Instant::now() < deadline {
                let changed = async { state.changed().await.is_ok() }.or(async {
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                    true
                });
                if !changed.await {
                    break;
                }
            }
            TopicResponse {
                error: ErrorCode::None,
                message: String::new(),
            }
        }
        Ok(other) => TopicResponse {
            error: ErrorCode::Unavailable,
            message: format!("unexpected reply {other:?}"),
        },
        Err(error) => TopicResponse {
            error: metadata_code(&error),
            message: error.to_string(),
        },
    }
}

/// Hands out the next producer id of this shard's block, fetching a new block from the
/// controller when it runs out.
async fn init_producer_id(
    ctx: &ShardContext,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let refused = |error| InitProducerIdResponse {
        error,
        producer_id: -1,
        producer_epoch: -1,
    };
    if request.transactional_id.is_some() {
        return refused(ErrorCode::InvalidConfig);
    }
    let (next, end) = ctx.producer_ids.get();
    let id = if next < end {
        ctx.producer_ids.set((next + 1, end));
        next
    } else {
        match ctx
            .link
            .call(AdminRequest::AllocateProducerIds {
                count: crate::limits::PRODUCER_ID_BLOCK_MAX,
            })
            .await
        {
            Ok(AdminReply::ProducerIds { start, count }) if count > 0 => {
                // Another request on this shard may have refilled meanwhile: keep the newer block.
                ctx.producer_ids.set((start + 1, start + count));
                start
            }
            Ok(_) => return refused(ErrorCode::Unavailable),
            Err(error) => return refused(metadata_code(&error)),
        }
    };
    match i64::try_from(id) {
        Ok(producer_id) => InitProducerIdResponse {
            error: ErrorCode::None,
            producer_id,
            producer_epoch: 0,
        },
        Err(_) => refused(ErrorCode::Unavailable),
    }
}

async fn produce(
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
    let mut results = Vec::with_capacity(request.partitions.len());
    let mut waits: Vec<(usize, crate::storage::PartitionLog, Appended)> = Vec::new();
    let mut at = 0usize;
    for p in &request.partitions {
        let batch = &data[at..at + p.batch_len as usize];
        at += p.batch_len as usize;
        let mut result = ProducePartitionResponse {
            topic: p.topic.clone(),
            partition: p.partition,
            error: ErrorCode::None,
            base_offset: 0,
            log_start: 0,
        };
        match ctx.partitions.get(&p.topic, p.partition) {
            Some(owned) if owned.leader => {
                match owned
                    .producers
                    .append(&owned.log, batch, owned.leader_epoch)
                    .await
                {
                    Ok(ProduceOutcome::Appended(appended)) => {
                        result.base_offset = appended.base_offset;
                        result.log_start = owned.log.log_start();
                        waits.push((results.len(), owned.log.clone(), appended));
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
                        waits.push((results.len(), owned.log.clone(), appended));
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
            None => result.error = ctx.missing_partition(&p.topic, p.partition),
        }
        results.push(result);
    }
    // One deadline for the whole request, however many batches it carries: the client's own
    // timeout covers the request, not each batch.
    let deadline = Instant::now() + Duration::from_millis(u64::from(request.timeout_ms.max(1)));
    let acks = request.acks;
    Ok(glommio::spawn_local(async move {
        for (index, log, appended) in waits {
            let durable = async { Some(log.wait_durable(appended).await) }.or(async {
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
        if acks == Acks::None {
            return None;
        }
        Some(response(
            id,
            &ProduceResponse {
                partitions: results,
            },
        ))
    })
    .detach())
}

/// Completes when any of the listeners fires.
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

async fn fetch(ctx: &ShardContext, id: u32, request: FetchRequest) -> Response {
    let deadline = Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
    loop {
        let mut listeners = Vec::new();
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
        let now = Instant::now();
        if failed || total >= request.min_bytes as usize || now >= deadline || listeners.is_empty()
        {
            let control = encode_control(&FetchResponse {
                partitions: answers,
            });
            return Response {
                head: encode_response_head(id, FrameError::None, &control, total),
                data,
            };
        }
        // Long poll: woken by the append (flush) that moves a durable end, or by the deadline.
        let wait = deadline - now;
        AnyListener(listeners)
            .or(async {
                glommio::timer::sleep(wait).await;
            })
            .await;
    }
}

async fn list_offsets(ctx: &ShardContext, request: ListOffsetsRequest) -> ListOffsetsResponse {
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
        partitions.push(answer);
    }
    ListOffsetsResponse { partitions }
}
