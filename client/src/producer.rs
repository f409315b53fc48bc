//! The producer: records are batched per partition, batches for one broker shard travel together
//! in produce requests, retries keep order and (with idempotence) never write twice.
//!
//! Data flow. `send` picks the partition, appends the record to that partition's open batch
//! under one lock and returns a [`Delivery`] future. A batch is closed when full, or when its
//! linger has passed and a request has room for it: while every in-flight slot of its
//! destination is busy, a lingered batch keeps taking records, so a producer spread over many
//! partitions sends fewer, larger batches the busier it is. A single sender task assigns
//! sequence numbers in the order batches first leave, groups ready batches by destination
//! address and queues one produce request per address with a free in-flight slot. A task per request waits for the response and completes
//! each record's delivery, or puts a batch back at the front of its partition's queue to be
//! retried.
//!
//! Ordering and idempotence. A partition has at most 16 batches in flight (the broker
//! remembers a producer's last 16 batches per partition, so a retry of any of them is
//! answered with its original offset rather than written again). After a retriable failure the
//! partition is paused until all its in-flight batches have returned, then resent from the
//! oldest, so batches reach the log in sequence order. A batch that fails for good after its
//! sequence number was used leaves a gap the broker would refuse; the partition then takes a new
//! producer id and renumbers what is queued.
//!
//! Memory. Every buffered record counts against `buffer_bytes_max` until its batch completes;
//! `send` waits (or fails, if so configured) while the buffer is full.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sluice_protocol::native::{
    ApiKey, ErrorCode, InitProducerIdRequest, InitProducerIdResponse, ProducePartition,
    ProduceRequest, ProduceResponse,
};
use sluice_protocol::{set_producer, BatchBuilder, BatchOptions, BATCH_HEADER_BYTES};
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::cluster::Cluster;
use crate::compression;
use crate::config::{Acks, ProducerConfig};
use crate::connection::{Connection, Enqueued};
use crate::error::{retriable_code, stale_metadata_code, Error, Result};
use crate::limits::IN_FLIGHT_BATCHES_PER_PARTITION_MAX;

/// A record to send. Build with [`ProducerRecord::new`] and the chained setters.
///
/// ```
/// use sluice_client::ProducerRecord;
///
/// let record = ProducerRecord::new("orders")
///     .key("customer-42")
///     .value("{\"total\": 12}")
///     .header("source", Some("web"));
/// assert_eq!(record.topic, "orders");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    pub topic: String,
    /// An explicit partition; overrides the partitioner.
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Milliseconds since the Unix epoch; default: the time of `send`.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<String>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            partition: None,
            key: None,
            value: None,
            headers: Vec::new(),
            timestamp: None,
        }
    }
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }
    pub fn value(mut self, value: impl Into<Bytes>) -> Self {
        self.value = Some(value.into());
        self
    }
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }
    pub fn timestamp(mut self, ms: i64) -> Self {
        self.timestamp = Some(ms);
        self
    }
    pub fn header(mut self, key: impl Into<String>, value: Option<impl Into<Bytes>>) -> Self {
        self.headers.push((key.into(), value.map(Into::into)));
        self
    }
}

/// Where a delivered record landed.
///
/// ```no_run
/// # async fn example(producer: sluice_client::Producer) -> Result<(), sluice_client::Error> {
/// use sluice_client::ProducerRecord;
///
/// let metadata = producer.send(ProducerRecord::new("orders").value("v")).await?.await?;
/// println!("partition {} offset {:?} at {} ms", metadata.partition, metadata.offset,
///          metadata.timestamp);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    pub partition: u32,
    /// The record's offset; `None` only with [`Acks::None`], where the broker does not answer.
    pub offset: Option<u64>,
    /// The record's timestamp (ms since the Unix epoch).
    pub timestamp: i64,
}

/// Resolves once the record is delivered (per the producer's `acks`) or has failed for good.
/// Dropping it does not cancel the send.
///
/// ```no_run
/// # async fn example(producer: sluice_client::Producer) -> Result<(), sluice_client::Error> {
/// use sluice_client::ProducerRecord;
///
/// // Queue many records first, then wait for all of them: sends pipeline.
/// let mut deliveries = Vec::new();
/// for i in 0..1000 {
///     deliveries.push(producer.send(ProducerRecord::new("orders").value(format!("{i}"))).await?);
/// }
/// for delivery in deliveries {
///     delivery.await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a Delivery reports whether the record was delivered"]
pub struct Delivery {
    outcome: Arc<BatchOutcome>,
    /// The record's place in its batch.
    index: u32,
    timestamp: i64,
}

impl Future for Delivery {
    type Output = Result<RecordMetadata>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(result) = self.result() {
            return Poll::Ready(result);
        }
        self.outcome.register(cx.waker());
        // Completed between the check and the registration: do not wait for a wake-up.
        match self.result() {
            Some(result) => Poll::Ready(result),
            None => Poll::Pending,
        }
    }
}

impl Delivery {
    fn result(&self) -> Option<Result<RecordMetadata>> {
        let result = self.outcome.result.get()?;
        Some(match result {
            Ok(base) => Ok(RecordMetadata {
                partition: self.outcome.partition,
                offset: base.map(|b| b + u64::from(self.index)),
                timestamp: self.timestamp,
            }),
            Err(e) => Err(e.clone()),
        })
    }

    /// Blocks the thread until the outcome is known (for the blocking facade).
    pub(crate) fn wait_blocking(self) -> Result<RecordMetadata> {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        loop {
            if let Some(result) = self.result() {
                return result;
            }
            self.outcome.register(&waker);
            if let Some(result) = self.result() {
                return result;
            }
            std::thread::park();
        }
    }
}

/// The outcome of one batch, shared by the deliveries of its records: one allocation per batch
/// rather than a channel per record, and completing a batch is one store and one wake-up pass.
#[derive(Debug)]
struct BatchOutcome {
    partition: u32,
    /// The batch's base offset (`None` with `Acks::None`), or why it failed.
    result: OnceLock<Result<Option<u64>>>,
    wakers: Mutex<Vec<Waker>>,
}

impl BatchOutcome {
    fn new(partition: u32) -> Arc<BatchOutcome> {
        Arc::new(BatchOutcome {
            partition,
            result: OnceLock::new(),
            wakers: Mutex::new(Vec::new()),
        })
    }

    fn register(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        // Records are usually awaited one after another by the same task.
        if !wakers.last().is_some_and(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    fn complete(&self, result: Result<Option<u64>>) {
        if self.result.set(result).is_ok() {
            let wakers =
                std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
            for waker in wakers {
                waker.wake();
            }
        }
    }
}

/// The producer's hold on a batch's outcome: a batch dropped without completing (the producer
/// went away) fails its records with [`Error::ProducerClosed`] instead of leaving them waiting.
#[derive(Debug)]
struct Completion(Arc<BatchOutcome>);

impl Drop for Completion {
    fn drop(&mut self) {
        self.0.complete(Err(Error::ProducerClosed));
    }
}

/// An asynchronous producer. Cheap to clone: clones share batches, connections and buffer.
///
/// ```no_run
/// # async fn example() -> Result<(), sluice_client::Error> {
/// use sluice_client::{ClientConfig, Producer, ProducerConfig, ProducerRecord};
///
/// let producer = Producer::new(ProducerConfig::new(ClientConfig::new(["127.0.0.1:9490"]))).await?;
/// // The first await waits for buffer room; the second for the broker's acknowledgement.
/// let delivery = producer.send(ProducerRecord::new("orders").key("k").value("v")).await?;
/// let metadata = delivery.await?;
/// println!("partition {} offset {:?}", metadata.partition, metadata.offset);
/// producer.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    handle: Arc<Handle>,
}

/// Dropping the last handle lets the sender task finish what is queued and stop.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
    }
}

type PartitionKey = (Arc<str>, u32);

#[derive(Debug)]
struct Shared {
    config: ProducerConfig,
    cluster: Arc<Cluster>,
    state: Mutex<State>,
    /// Wakes the sender task. Everything that changes what the sender should do next or when
    /// notifies it: a batch is ready, a response came back, a flush began, a retry time was set
    /// (an unreachable broker, a failed producer-id reset), a partition was un-paused, a
    /// metadata refresh ended. The
    /// sender sleeps until the earliest deadline it planned, so a change it is not told of
    /// would wait for that deadline, which may be a batch's delivery timeout.
    wake: Notify,
    /// Buffer room was freed.
    room: Notify,
    /// Records completed (flush waiters check whether theirs are all done).
    completed: Notify,
    /// The sender task has exited.
    stopped: Notify,
    /// A metadata refresh started by the sender is running (`refresh_in_background`).
    refreshing: AtomicBool,
}

#[derive(Debug)]
struct State {
    queues: HashMap<PartitionKey, PartitionQueue>,
    /// Interned topic names of `queues`' keys.
    topics: HashSet<Arc<str>>,
    buffered_bytes: usize,
    /// No more sends; the sender stops once everything queued is delivered or failed.
    closing: bool,
    sender_stopped: bool,
    /// Flushes in progress: while any is, batches go out without waiting for their linger.
    flushing: usize,
    /// Records not yet completed, by the flush generation they were sent in.
    generation: u64,
    incomplete: BTreeMap<u64, usize>,
    /// Topics whose partitions' addresses need a metadata refresh.
    stale_topics: HashSet<Arc<str>>,
    /// Producer id and epoch handed out for this producer (per-partition resets get their own).
    producer: Option<(i64, i16)>,
}

#[derive(Debug)]
struct PartitionQueue {
    open: Option<OpenBatch>,
    /// Closed batches not in flight, oldest (lowest sequence) first.
    ready: VecDeque<Batch>,
    in_flight: usize,
    /// Producer id and base sequence of each batch in flight (at most
    /// `IN_FLIGHT_BATCHES_PER_PARTITION_MAX`), so a refusal of a later batch can tell that an
    /// earlier one has not returned yet.
    in_flight_sequences: Vec<(i64, i32)>,
    /// The ordinal (the n-th batch of this partition to leave) of each batch in flight. A batch
    /// leaves only within `IN_FLIGHT_BATCHES_PER_PARTITION_MAX` ordinals of the oldest one in
    /// flight: outcomes are handled in any order, so later batches' successes can be handled
    /// before an earlier one's failure, and a window that only counted batches in flight would
    /// then send past what the broker remembers; the earlier batch's retry, already written,
    /// would be refused as out of order instead of answered as a duplicate.
    in_flight_ordinals: Vec<u64>,
    next_ordinal: u64,
    /// This partition's producer id and epoch, and the next sequence number.
    producer: (i64, i16),
    next_sequence: i32,
    /// After a failure: send nothing until the in-flight batches have all returned.
    paused: bool,
    /// After a batch failed for good with its sequence used: take a new producer id first.
    needs_reset: bool,
    retry_at: Option<Instant>,
    /// Bytes of the last batch closed, to size the next one.
    batch_bytes_last: usize,
}

#[derive(Debug)]
struct OpenBatch {
    builder: BatchBuilder,
    outcome: Completion,
    created: Instant,
    buffered_bytes: usize,
    generations: Vec<(u64, usize)>,
}

#[derive(Debug)]
enum Payload {
    /// Records added, not yet finished (its CRC is computed once, with the sequence number).
    Raw(BatchBuilder),
    /// As sent: compressed and stamped with `sequence` (if any).
    Wire(Bytes),
}

#[derive(Debug)]
struct Batch {
    payload: Payload,
    /// Producer id, epoch and base sequence assigned when it first left; `stamped` says whether
    /// the payload carries them.
    sequence: Option<(i64, i16, i32)>,
    stamped: bool,
    /// Which batch of its partition this is, in the order batches first left.
    ordinal: Option<u64>,
    record_count: u32,
    outcome: Completion,
    created: Instant,
    buffered_bytes: usize,
    generations: Vec<(u64, usize)>,
    attempts: u32,
    last_error: Option<Error>,
}

/// Batches bound for one address, with the in-flight slot reserved for their request.
struct Outbound {
    connection: Arc<Connection>,
    permit: OwnedSemaphorePermit,
    batches: Vec<(PartitionKey, Batch)>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Producer {
    /// Connects to the cluster and (with idempotence) obtains a producer id.
    pub async fn new(config: ProducerConfig) -> Result<Producer> {
        config.validate()?;
        let cluster = Cluster::new(config.client.clone())?;
        Self::with_cluster(config, cluster).await
    }

    pub(crate) async fn with_cluster(
        config: ProducerConfig,
        cluster: Arc<Cluster>,
    ) -> Result<Producer> {
        config.validate()?;
        let producer = if config.idempotence {
            Some(init_producer_id(&cluster).await?)
        } else {
            cluster.any_connection().await?;
            None
        };
        let shared = Arc::new(Shared {
            config,
            cluster,
            state: Mutex::new(State {
                queues: HashMap::new(),
                topics: HashSet::new(),
                buffered_bytes: 0,
                closing: false,
                sender_stopped: false,
                flushing: 0,
                generation: 0,
                incomplete: BTreeMap::new(),
                stale_topics: HashSet::new(),
                producer,
            }),
            wake: Notify::new(),
            room: Notify::new(),
            completed: Notify::new(),
            stopped: Notify::new(),
            refreshing: AtomicBool::new(false),
        });
        tokio::spawn(run_sender(Arc::clone(&shared)));
        Ok(Producer {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// Queues a record. Waits while the buffer is full (or fails with
    /// [`Error::BufferFull`] if `buffer_wait` is off). The returned [`Delivery`] resolves to the
    /// record's partition and offset once it is acknowledged.
    pub async fn send(&self, record: ProducerRecord) -> Result<Delivery> {
        let shared = &self.handle.shared;
        let topic = match shared.cluster.cached_topic(&record.topic) {
            Some(t) => t,
            None => shared.cluster.topic(&record.topic).await?,
        };
        let partitions = topic.partitions.len() as u32;
        let partition = match record.partition {
            Some(p) if p < partitions => p,
            Some(p) => {
                return Err(Error::UnknownPartition {
                    topic: record.topic,
                    partition: p,
                    partitions,
                })
            }
            None => {
                let p = shared.config.partitioner.partition(
                    &record.topic,
                    record.key.as_deref(),
                    partitions,
                );
                if p >= partitions {
                    return Err(Error::Config(format!(
                        "partitioner chose partition {p} of a {partitions}-partition topic"
                    )));
                }
                p
            }
        };
        let headers: Vec<(&[u8], Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_deref()))
            .collect();
        // The worst-case deltas (10-byte timestamp, 5-byte offset varints) bound the record.
        let record_bytes = BatchBuilder::record_len_bytes(
            0,
            0,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        ) + 13;
        if record_bytes + BATCH_HEADER_BYTES > shared.config.record_bytes_max {
            return Err(Error::RecordTooLarge {
                bytes: record_bytes,
                max: shared.config.record_bytes_max,
            });
        }
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let deadline = Instant::now() + shared.config.buffer_wait_max;
        loop {
            let room = shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut state = shared.lock();
                if state.closing {
                    return Err(Error::ProducerClosed);
                }
                let fits = state.buffered_bytes == 0
                    || state.buffered_bytes + record_bytes <= shared.config.buffer_bytes_max;
                if fits {
                    let delivery = shared.append(
                        &mut state,
                        &record,
                        partition,
                        partitions,
                        timestamp,
                        &headers,
                        record_bytes,
                    );
                    return Ok(delivery);
                }
                if !shared.config.buffer_wait {
                    return Err(Error::BufferFull {
                        buffered: state.buffered_bytes,
                        max: shared.config.buffer_bytes_max,
                    });
                }
            }
            if tokio::time::timeout_at(deadline.into(), room)
                .await
                .is_err()
            {
                let state = shared.lock();
                return Err(Error::BufferFull {
                    buffered: state.buffered_bytes,
                    max: shared.config.buffer_bytes_max,
                });
            }
        }
    }

    /// Sends everything queued now without waiting for linger, and waits until each record sent
    /// before this call is delivered or has failed.
    pub async fn flush(&self) -> Result<()> {
        flush(&self.handle.shared).await
    }

    /// Stops accepting records, delivers (or fails) everything pending, then stops the sender.
    /// Sends after `close` fail with [`Error::ProducerClosed`].
    pub async fn close(&self) -> Result<()> {
        let shared = &self.handle.shared;
        shared.lock().closing = true;
        shared.wake.notify_one();
        flush(shared).await?;
        loop {
            let stopped = shared.stopped.notified();
            tokio::pin!(stopped);
            stopped.as_mut().enable();
            if shared.lock().sender_stopped {
                return Ok(());
            }
            shared.wake.notify_one();
            stopped.await;
        }
    }

    /// Bytes of records buffered and not yet acknowledged.
    pub fn buffered_bytes(&self) -> usize {
        self.handle.shared.lock().buffered_bytes
    }

    /// The number of partitions of `topic` (fetching metadata if needed).
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        self.handle.shared.cluster.partition_count(topic).await
    }
}

/// Decrements the flush count when a flush ends, even if its future is dropped.
struct FlushGuard<'a>(&'a Shared);

impl Drop for FlushGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.flushing = state.flushing.saturating_sub(1);
    }
}

async fn flush(shared: &Shared) -> Result<()> {
    let generation = {
        let mut state = shared.lock();
        state.flushing += 1;
        let g = state.generation;
        state.generation += 1;
        g
    };
    let _guard = FlushGuard(shared);
    shared.wake.notify_one();
    loop {
        let completed = shared.completed.notified();
        tokio::pin!(completed);
        completed.as_mut().enable();
        if shared
            .lock()
            .incomplete
            .range(..=generation)
            .next()
            .is_none()
        {
            return Ok(());
        }
        completed.await;
    }
}

async fn init_producer_id(cluster: &Cluster) -> Result<(i64, i16)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            let connection = cluster.any_connection().await?;
            let response: InitProducerIdResponse = connection
                .call(
                    ApiKey::InitProducerId,
                    &InitProducerIdRequest {
                        transactional_id: None,
                    },
                    cluster.config.request_timeout,
                )
                .await?;
            if response.error != ErrorCode::None {
                return Err(Error::broker(response.error, "a producer id"));
            }
            Ok((response.producer_id, response.producer_epoch))
        }
        .await;
        match result {
            Err(e) if e.is_retriable() && attempt < 10 => {
                tracing::debug!(error = %e, "init producer id; retrying");
                tokio::time::sleep(cluster.config.backoff(attempt)).await;
            }
            other => return other,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[allow(clippy::too_many_arguments)]
    fn append(
        &self,
        state: &mut State,
        record: &ProducerRecord,
        partition: u32,
        partitions: u32,
        timestamp: i64,
        headers: &[(&[u8], Option<&[u8]>)],
        record_bytes: usize,
    ) -> Delivery {
        let generation = state.generation;
        *state.incomplete.entry(generation).or_default() += 1;
        state.buffered_bytes += record_bytes;
        let producer = state.producer.unwrap_or((-1, -1));
        // Topic names are interned: no allocation per record.
        let topic = match state.topics.get(record.topic.as_str()) {
            Some(t) => Arc::clone(t),
            None => {
                let t: Arc<str> = Arc::from(record.topic.as_str());
                state.topics.insert(Arc::clone(&t));
                t
            }
        };
        let key: PartitionKey = (topic, partition);
        let queue = state
            .queues
            .entry(key)
            .or_insert_with(|| PartitionQueue::new(producer));
        let batch_max = self.config.batch_bytes_max;
        // A full open batch is closed first; a record larger than a batch gets one of its own.
        if let Some(open) = &queue.open {
            if open.builder.len_bytes() + record_bytes > batch_max {
                queue.close_open();
                self.config
                    .partitioner
                    .batch_complete(&record.topic, partition, partitions);
                self.wake.notify_one();
            }
        }
        // Sized like the partition's previous batch: a busy partition's batches are built without
        // regrowing, a quiet one's stay small.
        let capacity = (BATCH_HEADER_BYTES + record_bytes).max(queue.batch_bytes_last);
        let open = queue.open.get_or_insert_with(|| OpenBatch {
            builder: BatchBuilder::with_capacity(BatchOptions::default(), capacity),
            outcome: Completion(BatchOutcome::new(partition)),
            created: Instant::now(),
            buffered_bytes: 0,
            generations: Vec::new(),
        });
        open.builder.push(
            timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            headers,
        );
        let delivery = Delivery {
            outcome: Arc::clone(&open.outcome.0),
            index: open.builder.record_count() - 1,
            timestamp,
        };
        open.buffered_bytes += record_bytes;
        match open.generations.last_mut() {
            Some((g, n)) if *g == generation => *n += 1,
            _ => open.generations.push((generation, 1)),
        }
        let full = open.builder.len_bytes() >= batch_max;
        let first = open.builder.record_count() == 1;
        if full {
            queue.close_open();
            self.config
                .partitioner
                .batch_complete(&record.topic, partition, partitions);
            self.wake.notify_one();
        } else if first {
            // The sender sleeps until the earliest linger deadline; a new batch may be earlier.
            self.wake.notify_one();
        }
        delivery
    }

    /// Marks a batch's records complete: frees their buffer and wakes flushes and waiters.
    fn complete(
        &self,
        state: &mut State,
        batch: Batch,
        result: std::result::Result<u64, Error>,
        partition: u32,
    ) {
        state.buffered_bytes = state.buffered_bytes.saturating_sub(batch.buffered_bytes);
        for (generation, n) in &batch.generations {
            if let Some(count) = state.incomplete.get_mut(generation) {
                *count = count.saturating_sub(*n);
                if *count == 0 {
                    state.incomplete.remove(generation);
                }
            }
        }
        let acked = !matches!(self.config.acks, Acks::None);
        debug_assert_eq!(batch.outcome.0.partition, partition);
        batch
            .outcome
            .0
            .complete(result.map(|base| acked.then_some(base)));
        self.room.notify_waiters();
        self.completed.notify_waiters();
    }
}

impl PartitionQueue {
    fn new(producer: (i64, i16)) -> PartitionQueue {
        PartitionQueue {
            open: None,
            ready: VecDeque::new(),
            in_flight: 0,
            in_flight_sequences: Vec::new(),
            in_flight_ordinals: Vec::new(),
            next_ordinal: 0,
            producer,
            next_sequence: 0,
            paused: false,
            needs_reset: false,
            retry_at: None,
            batch_bytes_last: 0,
        }
    }

    /// Whether the oldest ready batch may leave: within `IN_FLIGHT_BATCHES_PER_PARTITION_MAX`
    /// ordinals of the oldest batch in flight (see `in_flight_ordinals`).
    /// Whether the next batch to leave (the ready front, else the open batch) is within
    /// `IN_FLIGHT_BATCHES_PER_PARTITION_MAX` ordinals of the oldest in flight.
    fn window_open(&self) -> bool {
        let ordinal = self
            .ready
            .front()
            .and_then(|front| front.ordinal)
            .unwrap_or(self.next_ordinal);
        self.in_flight_ordinals
            .iter()
            .min()
            .is_none_or(|&oldest| ordinal < oldest + IN_FLIGHT_BATCHES_PER_PARTITION_MAX as u64)
    }

    fn close_open(&mut self) {
        if let Some(open) = self.open.take() {
            self.batch_bytes_last = open.builder.len_bytes();
            self.ready.push_back(Batch {
                record_count: open.builder.record_count(),
                payload: Payload::Raw(open.builder),
                sequence: None,
                stamped: false,
                ordinal: None,
                outcome: open.outcome,
                created: open.created,
                buffered_bytes: open.buffered_bytes,
                generations: open.generations,
                attempts: 0,
                last_error: None,
            });
        }
    }

    /// Puts a batch back for a retry, keeping the queue in sequence order.
    fn requeue(&mut self, batch: Batch) {
        let at = match batch.sequence {
            Some((_, _, seq)) => self
                .ready
                .iter()
                .position(|b| b.sequence.is_none_or(|(_, _, s)| s > seq))
                .unwrap_or(self.ready.len()),
            None => 0,
        };
        self.ready.insert(at, batch);
    }

    fn is_idle(&self) -> bool {
        self.open.is_none() && self.ready.is_empty() && self.in_flight == 0
    }
}

/// What the sender should do next, decided under the lock.
#[derive(Debug, Default)]
struct Plan {
    /// Addresses with a batch ready to go.
    addresses: Vec<String>,
    /// Partitions that need a new producer id before they can send.
    resets: Vec<PartitionKey>,
    stale_topics: Vec<Arc<str>>,
    next_deadline: Option<Instant>,
    exit: bool,
}

/// Refreshes the metadata of `topics` in a task of its own, so that a refresh waiting on an
/// unreachable broker (connection attempts, backoffs between them) never holds up the sender,
/// which serves the other brokers meanwhile and is woken when the refresh ends. One refresh at a
/// time: topics that go stale during one wait for the next.
fn refresh_in_background(shared: &Arc<Shared>, topics: Vec<Arc<str>>) {
    if shared.refreshing.swap(true, Ordering::AcqRel) {
        shared.lock().stale_topics.extend(topics);
        return;
    }
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let names: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        if let Err(error) = shared.cluster.refresh(Some(&names)).await {
            tracing::debug!(%error, "metadata refresh failed");
        }
        shared.refreshing.store(false, Ordering::Release);
        // New addresses, or a topic that went stale meanwhile: plan again.
        shared.wake.notify_one();
    });
}

async fn run_sender(shared: Arc<Shared>) {
    loop {
        let wake = shared.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let plan = shared.plan(Instant::now());
        if plan.exit {
            shared.lock().sender_stopped = true;
            shared.stopped.notify_waiters();
            return;
        }
        if !plan.stale_topics.is_empty() {
            refresh_in_background(&shared, plan.stale_topics);
        }
        for key in plan.resets {
            shared.reset_partition(key).await;
        }
        let mut outbound = Vec::new();
        for address in plan.addresses {
            match shared.cluster.connection(&address).await {
                Ok(connection) => match connection.try_reserve() {
                    Some(permit) => outbound.push((connection, permit)),
                    // Closed since it was handed out (an idle connection has no request whose
                    // failure would wake the sender): treat it as unreachable, which does.
                    None if connection.is_closed() => shared.unreachable(
                        &address,
                        Error::Connection {
                            address: address.clone(),
                            reason: "closed".into(),
                        },
                    ),
                    // Every slot is taken: a response frees one and wakes the sender.
                    None => {}
                },
                Err(error) => shared.unreachable(&address, error),
            }
        }
        let mut sent = false;
        for out in shared.drain(outbound) {
            sent = true;
            shared.send_request(out);
        }
        if sent {
            continue;
        }
        if tracing::enabled!(tracing::Level::TRACE) {
            let state = shared.lock();
            for (key, q) in &state.queues {
                tracing::trace!(topic = %key.0, partition = key.1, in_flight = q.in_flight,
                    ready = q.ready.len(), open = q.open.is_some(), paused = q.paused,
                    needs_reset = q.needs_reset, buffered = state.buffered_bytes, "sender idle");
            }
        }
        match plan.next_deadline {
            Some(deadline) => {
                let _ = tokio::time::timeout_at(deadline.into(), wake).await;
            }
            None => wake.await,
        }
    }
}

impl Shared {
    /// Closes a partition's open batch (it joins the ready queue) and tells the partitioner.
    fn close_open(&self, key: &PartitionKey, queue: &mut PartitionQueue) {
        if queue.open.is_none() {
            return;
        }
        queue.close_open();
        if let Some(t) = self.cluster.cached_topic(&key.0) {
            self.config
                .partitioner
                .batch_complete(&key.0, key.1, t.partitions.len() as u32);
        }
    }

    fn plan(&self, now: Instant) -> Plan {
        let mut state = self.lock();
        let state = &mut *state;
        let mut plan = Plan::default();
        let linger_over = state.flushing > 0 || state.closing;
        let delivery_timeout = self.config.delivery_timeout;
        let mut expired: Vec<(PartitionKey, Batch)> = Vec::new();
        let routes = self.cluster.routes();
        let mut addresses: HashSet<&str> = HashSet::new();
        let deadline = |at: Instant, plan: &mut Plan| {
            plan.next_deadline = Some(plan.next_deadline.map_or(at, |d| d.min(at)));
        };
        for (key, queue) in state.queues.iter_mut() {
            // An open batch whose linger is over may leave, but stays open (taking records)
            // until a request has room for it: while every in-flight slot is busy, batches
            // grow instead of queueing up small (Kafka's accumulator does the same). Only one
            // that outlived its delivery timeout is closed here, to fail below.
            let mut lingered = false;
            if let Some(open) = &queue.open {
                let due = open.created + self.config.linger;
                let expires = open.created + delivery_timeout;
                if expires <= now {
                    self.close_open(key, queue);
                } else if linger_over || due <= now {
                    lingered = true;
                    deadline(expires, &mut plan);
                } else {
                    deadline(due, &mut plan);
                }
            }
            // Fail batches whose delivery timeout passed while they waited here.
            while let Some(front) = queue.ready.front() {
                if front.created + delivery_timeout > now {
                    deadline(front.created + delivery_timeout, &mut plan);
                    break;
                }
                if let Some(batch) = queue.ready.pop_front() {
                    if batch.sequence.is_some() {
                        queue.needs_reset = true;
                        queue.paused = true;
                    }
                    expired.push((key.clone(), batch));
                }
            }
            if queue.ready.is_empty() && !lingered {
                continue;
            }
            if queue.paused {
                if queue.in_flight > 0 {
                    continue;
                }
                if queue.needs_reset {
                    plan.resets.push(key.clone());
                    continue;
                }
                queue.paused = false;
            }
            if let Some(at) = queue.retry_at {
                if at > now {
                    deadline(at, &mut plan);
                    continue;
                }
                queue.retry_at = None;
            }
            if queue.in_flight >= IN_FLIGHT_BATCHES_PER_PARTITION_MAX || !queue.window_open() {
                continue;
            }
            match routes.address_of(&key.0, key.1) {
                Some(address) => {
                    addresses.insert(address);
                }
                None => {
                    state.stale_topics.insert(Arc::clone(&key.0));
                    queue.retry_at = Some(now + self.config.client.retry_backoff);
                    deadline(now + self.config.client.retry_backoff, &mut plan);
                }
            }
        }
        for (key, batch) in expired {
            let error = Error::DeliveryTimeout {
                after: delivery_timeout,
                last: batch
                    .last_error
                    .as_ref()
                    .map_or_else(|| "never sent".to_owned(), ToString::to_string),
            };
            self.complete(state, batch, Err(error), key.1);
        }
        // Queues stay after they empty: a partition's next sequence number must survive.
        plan.addresses = addresses.into_iter().map(str::to_owned).collect();
        plan.stale_topics = state.stale_topics.drain().collect();
        plan.exit = state.closing && state.queues.values().all(PartitionQueue::is_idle);
        plan
    }

    /// Takes ready batches for each address that has a free in-flight slot, assigning sequence
    /// numbers to batches leaving for the first time.
    fn drain(&self, slots: Vec<(Arc<Connection>, OwnedSemaphorePermit)>) -> Vec<Outbound> {
        if slots.is_empty() {
            return Vec::new();
        }
        let mut state = self.lock();
        let state = &mut *state;
        let now = Instant::now();
        let mut by_address: HashMap<String, Outbound> = slots
            .into_iter()
            .map(|(connection, permit)| {
                (
                    connection.address().to_owned(),
                    Outbound {
                        connection,
                        permit,
                        batches: Vec::new(),
                    },
                )
            })
            .collect();
        let mut bytes: HashMap<&str, usize> = HashMap::new();
        let request_max = self.config.request_bytes_max;
        let linger_over = state.flushing > 0 || state.closing;
        let routes = self.cluster.routes();
        for (key, queue) in state.queues.iter_mut() {
            if queue.paused || queue.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            let Some(address) = routes.address_of(&key.0, key.1) else {
                continue;
            };
            let Some(out) = by_address.get_mut(address) else {
                continue;
            };
            let used = bytes.entry(address).or_default();
            // One batch per partition per request, as in Kafka: a partition's batches pipeline
            // over requests, and a request's batches are all for different partitions.
            if queue.in_flight < IN_FLIGHT_BATCHES_PER_PARTITION_MAX {
                if queue.ready.is_empty() {
                    // The open batch leaves once lingered, with every record that joined it
                    // while it waited for this slot.
                    let lingered = queue
                        .open
                        .as_ref()
                        .is_some_and(|o| linger_over || o.created + self.config.linger <= now);
                    if !lingered {
                        continue;
                    }
                    self.close_open(key, queue);
                }
                let Some(front) = queue.ready.front() else {
                    continue;
                };
                if !queue.window_open() {
                    continue;
                }
                let len = match &front.payload {
                    Payload::Raw(builder) => builder.len_bytes(),
                    Payload::Wire(b) => b.len(),
                };
                if *used > 0 && *used + len > request_max {
                    continue;
                }
                let Some(mut batch) = queue.ready.pop_front() else {
                    continue;
                };
                if batch.sequence.is_none() && queue.producer.0 >= 0 {
                    batch.sequence =
                        Some((queue.producer.0, queue.producer.1, queue.next_sequence));
                    batch.stamped = false;
                    queue.next_sequence =
                        ((i64::from(queue.next_sequence) + i64::from(batch.record_count))
                            % (i64::from(i32::MAX) + 1)) as i32;
                }
                if batch.ordinal.is_none() {
                    batch.ordinal = Some(queue.next_ordinal);
                    queue.next_ordinal += 1;
                }
                *used += len;
                queue.in_flight += 1;
                if let Some((producer_id, _, seq)) = batch.sequence {
                    queue.in_flight_sequences.push((producer_id, seq));
                }
                queue.in_flight_ordinals.extend(batch.ordinal);
                out.batches.push((key.clone(), batch));
            }
        }
        by_address
            .into_values()
            .filter(|o| !o.batches.is_empty())
            .collect()
    }

    /// Encodes the batches, queues the request on its connection and spawns its waiter.
    fn send_request(self: &Arc<Self>, out: Outbound) {
        let Outbound {
            connection,
            permit,
            mut batches,
        } = out;
        let compression = self.config.compression;
        let mut data = Vec::with_capacity(batches.len());
        let mut partitions = Vec::with_capacity(batches.len());
        for (key, batch) in batches.iter_mut() {
            let wire = encode(batch, compression);
            partitions.push(ProducePartition {
                topic: key.0.to_string(),
                partition: key.1,
                batch_len: wire.len() as u32,
            });
            data.push(wire);
        }
        let timeout = self.config.client.request_timeout;
        let request = ProduceRequest {
            acks: self.config.acks.wire(),
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            partitions,
        };
        let expect_response = !matches!(self.config.acks, Acks::None);
        let enqueued = connection.enqueue(permit, ApiKey::Produce, &request, data, expect_response);
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = match enqueued {
                Err(e) => Err(e),
                Ok(Enqueued::Written(done)) => {
                    done.await.map(|_| None).map_err(|_| Error::Connection {
                        address: connection.address().to_owned(),
                        reason: "closed before the request was written".into(),
                    })
                }
                // The broker waits up to `timeout` for durability and then answers with a
                // Timeout error; allow it a little longer before giving up on the connection.
                Ok(Enqueued::Response(rx)) => connection
                    .wait(rx, timeout + Duration::from_secs(5))
                    .await
                    .and_then(|r| r.control::<ProduceResponse>(connection.address()))
                    .map(Some),
            };
            shared.handle_outcome(batches, outcome);
        });
    }

    fn handle_outcome(
        &self,
        batches: Vec<(PartitionKey, Batch)>,
        outcome: Result<Option<ProduceResponse>>,
    ) {
        let mut state = self.lock();
        let state = &mut *state;
        let mut results: Vec<std::result::Result<u64, Error>> = match outcome {
            Ok(None) => batches.iter().map(|_| Ok(0)).collect(),
            Ok(Some(response)) if response.partitions.len() == batches.len() => response
                .partitions
                .into_iter()
                .map(|p| {
                    if p.error == ErrorCode::None {
                        Ok(p.base_offset)
                    } else {
                        Err(Error::broker(
                            p.error,
                            format!("batch for {}/{}", p.topic, p.partition),
                        ))
                    }
                })
                .collect(),
            Ok(Some(_)) => batches
                .iter()
                .map(|_| {
                    Err(Error::Protocol {
                        address: "broker".into(),
                        reason: "produce response does not match the request".into(),
                    })
                })
                .collect(),
            Err(e) => batches.iter().map(|_| Err(e.clone())).collect(),
        };
        let now = Instant::now();
        for ((key, mut batch), result) in batches.into_iter().zip(results.drain(..)) {
            let Some(queue) = state.queues.get_mut(&key) else {
                unreachable!("queues are never removed, and this batch came from one");
            };
            queue.in_flight -= 1;
            if let Some(at) = batch
                .ordinal
                .and_then(|o| queue.in_flight_ordinals.iter().position(|&x| x == o))
            {
                queue.in_flight_ordinals.swap_remove(at);
            }
            if let Some((producer_id, _, seq)) = batch.sequence {
                if let Some(at) = queue
                    .in_flight_sequences
                    .iter()
                    .position(|&s| s == (producer_id, seq))
                {
                    queue.in_flight_sequences.swap_remove(at);
                }
            }
            let error = match result {
                Ok(base) => {
                    self.complete(state, batch, Ok(base), key.1);
                    continue;
                }
                Err(e) => e,
            };
            let code = match &error {
                Error::Broker { code, .. } => Some(*code),
                _ => None,
            };
            // An out-of-order refusal is expected while an earlier batch of this partition is
            // being retried, or has not returned yet (the outcomes of a connection's requests
            // are handled by separate tasks, in any order): this one goes back behind it.
            let earlier_pending = batch.sequence.is_some_and(|(producer_id, _, seq)| {
                queue.ready.iter().any(|b| {
                    b.sequence
                        .is_some_and(|(p, _, s)| p == producer_id && s < seq)
                }) || queue
                    .in_flight_sequences
                    .iter()
                    .any(|&(p, s)| p == producer_id && s < seq)
            });
            let retriable = match code {
                None => error.is_retriable(),
                Some(ErrorCode::OutOfOrderSequence) => earlier_pending,
                Some(c) => retriable_code(c),
            };
            if code.is_none_or(stale_metadata_code) {
                state.stale_topics.insert(Arc::clone(&key.0));
            }
            let within_time = batch.created + self.config.delivery_timeout > now;
            if retriable && within_time {
                batch.attempts += 1;
                tracing::debug!(topic = %key.0, partition = key.1, %error, attempt = batch.attempts,
                    "produce failed; retrying");
                batch.last_error = Some(error);
                queue.paused = true;
                queue.retry_at = Some(now + self.config.client.backoff(batch.attempts));
                queue.requeue(batch);
                continue;
            }
            if batch.sequence.is_some() {
                // Its sequence numbers may or may not be in the log: renumber what follows under
                // a new producer id so the broker accepts it.
                queue.needs_reset = true;
                queue.paused = true;
            }
            let error = if within_time {
                error
            } else {
                Error::DeliveryTimeout {
                    after: self.config.delivery_timeout,
                    last: error.to_string(),
                }
            };
            self.complete(state, batch, Err(error), key.1);
        }
        self.wake.notify_one();
    }

    /// A partition's address could not be connected to: retry later and refresh metadata.
    fn unreachable(&self, address: &str, error: Error) {
        tracing::debug!(address, %error, "cannot connect");
        {
            let mut state = self.lock();
            let state = &mut *state;
            let retry = Instant::now() + self.config.client.retry_backoff;
            for (key, queue) in state.queues.iter_mut() {
                if self.cluster.address_of(&key.0, key.1).as_deref() == Some(address) {
                    queue.retry_at = Some(retry);
                    if let Some(front) = queue.ready.front_mut() {
                        front.last_error = Some(error.clone());
                    }
                    state.stale_topics.insert(Arc::clone(&key.0));
                }
            }
        }
        // The sender's next action changed (a retry time, a metadata refresh): it must plan
        // again rather than sleep until the deadline it computed before.
        self.wake.notify_one();
    }

    /// Gives a partition a new producer id and renumbers its queued batches.
    async fn reset_partition(&self, key: PartitionKey) {
        let producer = match init_producer_id(&self.cluster).await {
            Ok(p) => p,
            Err(error) => {
                tracing::warn!(%error, "cannot obtain a new producer id; will retry");
                if let Some(queue) = self.lock().queues.get_mut(&key) {
                    queue.retry_at = Some(Instant::now() + self.config.client.retry_backoff_max);
                }
                self.wake.notify_one();
                return;
            }
        };
        let mut state = self.lock();
        if let Some(queue) = state.queues.get_mut(&key) {
            if queue.in_flight > 0 {
                return; // Cannot happen while paused; the next plan retries.
            }
            queue.producer = producer;
            queue.next_sequence = 0;
            for batch in queue.ready.iter_mut() {
                batch.sequence = None;
                batch.stamped = false;
            }
            queue.needs_reset = false;
            queue.paused = false;
        }
        drop(state);
        // Un-paused: its batches can go now, not at whatever deadline the sender planned.
        self.wake.notify_one();
    }
}

/// The batch as it goes on the wire: finished and compressed once, stamped with its current
/// sequence (a restamp after a producer-id reset rewrites the header and CRC only).
fn encode(batch: &mut Batch, compression: crate::config::Compression) -> Bytes {
    let options = match batch.sequence {
        Some((producer_id, producer_epoch, base_sequence)) => BatchOptions {
            producer_id,
            producer_epoch,
            base_sequence,
        },
        None => BatchOptions::default(),
    };
    let payload = std::mem::replace(&mut batch.payload, Payload::Wire(Bytes::new()));
    let wire = match payload {
        Payload::Raw(mut builder) => {
            builder.set_options(options);
            Bytes::from(compression::compress(builder.finish(), compression))
        }
        Payload::Wire(wire) if batch.stamped => wire,
        Payload::Wire(wire) => {
            let mut bytes = wire.to_vec();
            set_producer(&mut bytes, options);
            Bytes::from(bytes)
        }
    };
    batch.stamped = true;
    batch.payload = Payload::Wire(wire.clone());
    wire
}
