//! Client, producer and consumer configuration with documented defaults.
//!
//! Every setting has a default chosen for a broker with default settings; the builders set one
//! field at a time and the constructors (`Producer::new`, `Consumer::new`) check the whole.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::native::Acks as WireAcks;

use crate::error::{Error, Result};
use crate::group::DeliveryGuarantee;
use crate::limits::{IN_FLIGHT_PER_CONNECTION_MAX, REQUEST_FRAME_BYTES_MAX};
use crate::partitioner::{DefaultPartitioner, Partitioner};

/// Settings shared by producers, consumers and the admin client.
///
/// ```
/// use std::time::Duration;
/// use sluice_client::ClientConfig;
///
/// let config = ClientConfig::new(["127.0.0.1:9490"])
///     .client_id("billing")
///     .request_timeout(Duration::from_secs(10));
/// assert_eq!(config.bootstrap, vec!["127.0.0.1:9490".to_string()]);
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Brokers to ask for metadata first (`host:port`); one reachable broker is enough.
    pub bootstrap: Vec<String>,
    /// Sent in the handshake; shows up in broker logs. Default `sluice-client`.
    pub client_id: String,
    /// How long a request may wait for its response before the connection is closed and the
    /// request failed (and retried, where the operation retries). Default 30 s.
    pub request_timeout: Duration,
    /// How long to wait for a TCP connection and handshake. Default 10 s.
    pub connect_timeout: Duration,
    /// Metadata older than this is refreshed before use. Default 5 min.
    pub metadata_max_age: Duration,
    /// How long a topic missing from metadata is looked for again before the operation fails
    /// with [`Error::UnknownTopic`]; covers a topic another client created a moment ago, which
    /// every broker shard learns of within milliseconds. Default 1 s.
    pub metadata_wait_max: Duration,
    /// First wait before a retry; doubles per attempt up to `retry_backoff_max`. Default 100 ms.
    pub retry_backoff: Duration,
    /// Longest wait between retries. Default 1 s.
    pub retry_backoff_max: Duration,
    /// Requests in flight per connection (at most 32, the broker's limit). Default 16: an
    /// acknowledgement waits for the broker's group commit, so one connection needs a deep
    /// pipeline to reach its throughput.
    pub in_flight_max: usize,
    /// Connect to the shard that owns a partition (the broker's per-shard address) rather than
    /// the broker's main address, avoiding a cross-shard hop. Default true.
    pub shard_aware: bool,
}

impl ClientConfig {
    /// A configuration with default settings and the given bootstrap brokers.
    pub fn new<I, S>(bootstrap: I) -> ClientConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            bootstrap: bootstrap.into_iter().map(Into::into).collect(),
            client_id: "sluice-client".into(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            metadata_max_age: Duration::from_secs(300),
            metadata_wait_max: Duration::from_secs(1),
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            in_flight_max: 16,
            shard_aware: true,
        }
    }

    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    pub fn retry_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.retry_backoff = first;
        self.retry_backoff_max = max;
        self
    }
    pub fn in_flight_max(mut self, requests: usize) -> Self {
        self.in_flight_max = requests;
        self
    }
    pub fn shard_aware(mut self, on: bool) -> Self {
        self.shard_aware = on;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.bootstrap.is_empty() {
            return Err(Error::Config("bootstrap has no broker address".into()));
        }
        if self.in_flight_max == 0 || self.in_flight_max > IN_FLIGHT_PER_CONNECTION_MAX {
            return Err(Error::Config(format!(
                "in_flight_max must be 1..={IN_FLIGHT_PER_CONNECTION_MAX}, not {}",
                self.in_flight_max
            )));
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::Config("timeouts must be positive".into()));
        }
        Ok(())
    }

    /// The backoff before retry number `attempt` (1-based).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.retry_backoff
            .saturating_mul(factor)
            .min(self.retry_backoff_max)
    }
}

/// How durable a record must be before the producer reports it delivered.
///
/// ```
/// use sluice_client::{Acks, ClientConfig, ProducerConfig};
///
/// // Fire and forget: fastest, no offsets, lost if the broker dies before writing.
/// let config = ProducerConfig::new(ClientConfig::new(["127.0.0.1:9490"])).acks(Acks::None);
/// assert_eq!(config.acks, Acks::None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Fire and forget: delivered once written to the socket; no offset is reported.
    None,
    /// Durable on the partition leader per its flush policy.
    Leader,
    /// Durable on all in-sync replicas (today the same as `Leader`).
    All,
}

impl Acks {
    pub(crate) fn wire(self) -> WireAcks {
        match self {
            Acks::None => WireAcks::None,
            Acks::Leader => WireAcks::Leader,
            Acks::All => WireAcks::All,
        }
    }
}

/// Batch compression codec. Batches are stored compressed and decompressed by consumers.
///
/// ```
/// use sluice_client::{ClientConfig, Compression, ProducerConfig};
///
/// let config = ProducerConfig::new(ClientConfig::new(["127.0.0.1:9490"]))
///     .compression(Compression::Zstd { level: 3 });
/// assert_eq!(config.compression, Compression::Zstd { level: 3 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    /// lz4 block compression: fast, modest ratio.
    Lz4,
    /// zstd at the given level (1–22; 3 is zstd's default).
    Zstd {
        level: i32,
    },
}

/// Settings of a [`crate::Producer`].
///
/// ```
/// use std::time::Duration;
/// use sluice_client::{Acks, ClientConfig, Compression, ProducerConfig};
///
/// let config = ProducerConfig::new(ClientConfig::new(["127.0.0.1:9490"]))
///     .acks(Acks::All)
///     .linger(Duration::from_millis(2))
///     .compression(Compression::Lz4);
/// assert!(config.idempotence);
/// ```
#[derive(Clone)]
pub struct ProducerConfig {
    pub client: ClientConfig,
    /// Default [`Acks::All`].
    pub acks: Acks,
    /// How long a batch waits for more records before it is sent. Default 5 ms.
    pub linger: Duration,
    /// A batch is sent once it holds this many bytes. Default 1 MiB, the broker's default
    /// `message_bytes_max` (a topic configured with a lower limit needs a lower value here).
    /// Large batches matter because a partition has at most 16 batches in flight (what the
    /// broker remembers for idempotent retries) and an ack waits for the group commit: per
    /// partition, throughput is at most 16 batches per ack latency.
    pub batch_bytes_max: usize,
    /// Bytes a produce request may carry over all its partitions. Default 8 MiB.
    pub request_bytes_max: usize,
    /// Largest single record accepted (the broker's default message limit). Default 1 MiB.
    pub record_bytes_max: usize,
    /// Bytes of records buffered (not yet acknowledged) before `send` waits. Default 64 MiB.
    pub buffer_bytes_max: usize,
    /// When the buffer is full: `true` (default) makes `send` wait up to `buffer_wait_max` for
    /// room; `false` makes it fail at once with [`Error::BufferFull`].
    pub buffer_wait: bool,
    /// Longest `send` waits for buffer room. Default 60 s.
    pub buffer_wait_max: Duration,
    /// Time from `send` to a final outcome, retries included; after it the record fails with
    /// [`Error::DeliveryTimeout`]. Default 120 s.
    pub delivery_timeout: Duration,
    /// Exactly-once delivery per partition on retries (producer id and sequence numbers).
    /// Default true.
    pub idempotence: bool,
    /// Default [`Compression::None`].
    pub compression: Compression,
    /// Chooses the partition of records without an explicit one. Default:
    /// [`DefaultPartitioner`] (murmur2 of the key as Kafka does; sticky for keyless records).
    pub partitioner: Arc<dyn Partitioner>,
}

impl fmt::Debug for ProducerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProducerConfig")
            .field("client", &self.client)
            .field("acks", &self.acks)
            .field("linger", &self.linger)
            .field("batch_bytes_max", &self.batch_bytes_max)
            .field("request_bytes_max", &self.request_bytes_max)
            .field("record_bytes_max", &self.record_bytes_max)
            .field("buffer_bytes_max", &self.buffer_bytes_max)
            .field("buffer_wait", &self.buffer_wait)
            .field("buffer_wait_max", &self.buffer_wait_max)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("idempotence", &self.idempotence)
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl ProducerConfig {
    pub fn new(client: ClientConfig) -> ProducerConfig {
        ProducerConfig {
            client,
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes_max: 1 << 20,
            request_bytes_max: 8 << 20,
            record_bytes_max: 1 << 20,
            buffer_bytes_max: 64 << 20,
            buffer_wait: true,
            buffer_wait_max: Duration::from_secs(60),
            delivery_timeout: Duration::from_secs(120),
            idempotence: true,
            compression: Compression::None,
            partitioner: Arc::new(DefaultPartitioner::new()),
        }
    }

    pub fn acks(mut self, acks: Acks) -> Self {
        self.acks = acks;
        self
    }
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }
    pub fn batch_bytes_max(mut self, bytes: usize) -> Self {
        self.batch_bytes_max = bytes;
        self
    }
    pub fn record_bytes_max(mut self, bytes: usize) -> Self {
        self.record_bytes_max = bytes;
        self
    }
    pub fn buffer_bytes_max(mut self, bytes: usize) -> Self {
        self.buffer_bytes_max = bytes;
        self
    }
    /// `false`: `send` fails with [`Error::BufferFull`] instead of waiting for room.
    pub fn buffer_wait(mut self, wait: bool) -> Self {
        self.buffer_wait = wait;
        self
    }
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = timeout;
        self
    }
    pub fn idempotence(mut self, on: bool) -> Self {
        self.idempotence = on;
        self
    }
    pub fn compression(mut self, codec: Compression) -> Self {
        self.compression = codec;
        self
    }
    pub fn partitioner(mut self, partitioner: Arc<dyn Partitioner>) -> Self {
        self.partitioner = partitioner;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        self.client.validate()?;
        let sizes = [
            ("batch_bytes_max", self.batch_bytes_max),
            ("record_bytes_max", self.record_bytes_max),
            ("request_bytes_max", self.request_bytes_max),
            ("buffer_bytes_max", self.buffer_bytes_max),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config(format!("{name} must be positive")));
        }
        if self.request_bytes_max > REQUEST_FRAME_BYTES_MAX - (1 << 20) {
            return Err(Error::Config(format!(
                "request_bytes_max {} exceeds the frame limit",
                self.request_bytes_max
            )));
        }
        if self.record_bytes_max > self.request_bytes_max {
            return Err(Error::Config(
                "record_bytes_max exceeds request_bytes_max".into(),
            ));
        }
        if let Compression::Zstd { level } = self.compression {
            if !(1..=22).contains(&level) {
                return Err(Error::Config(format!("zstd level {level} is not 1..=22")));
            }
        }
        if self.delivery_timeout < self.linger {
            return Err(Error::Config(
                "delivery_timeout is shorter than linger".into(),
            ));
        }
        Ok(())
    }
}

/// Where a consumer starts when it has no valid position for a partition.
///
/// ```
/// use sluice_client::{ClientConfig, ConsumerConfig, OffsetReset};
///
/// // Read everything still in the log the first time a partition is polled.
/// let config = ConsumerConfig::new(ClientConfig::new(["127.0.0.1:9490"]))
///     .auto_offset_reset(OffsetReset::Earliest);
/// assert_eq!(config.auto_offset_reset, OffsetReset::Earliest);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// The first record still in the log.
    Earliest,
    /// The next record to be written (only new records are read).
    Latest,
    /// Fail `poll` with [`Error::OffsetOutOfRange`].
    Error,
}

/// Settings of a [`crate::Consumer`].
///
/// ```
/// use std::time::Duration;
/// use sluice_client::{ClientConfig, ConsumerConfig, OffsetReset};
///
/// let config = ConsumerConfig::new(ClientConfig::new(["127.0.0.1:9490"]))
///     .auto_offset_reset(OffsetReset::Earliest)
///     .fetch_wait_max(Duration::from_millis(100));
/// assert_eq!(config.fetch_bytes_min, 1);
/// ```
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub client: ClientConfig,
    /// Bytes one fetch request may return over all its partitions; also the bound on data
    /// prefetched per broker connection. Default 16 MiB.
    pub fetch_bytes_max: usize,
    /// Bytes one fetch may return per partition (at least one whole batch is always returned).
    /// Default 4 MiB.
    pub partition_fetch_bytes_max: usize,
    /// The broker holds a fetch until this many bytes are ready or `fetch_wait_max` passes.
    /// Default 1.
    pub fetch_bytes_min: usize,
    /// Longest the broker holds a fetch waiting for data (long polling). Default 500 ms.
    pub fetch_wait_max: Duration,
    /// Default [`OffsetReset::Latest`], as in Kafka.
    pub auto_offset_reset: OffsetReset,
    /// Records one `poll` returns at most. Default 10,000.
    pub poll_records_max: usize,
    /// A group member's session: if the coordinator hears no heartbeat for this long, the
    /// member's partitions go to others (bounded by the broker). Default 45 s.
    pub group_session_timeout: Duration,
    /// Static membership: a member restarting with the same id within its session timeout
    /// gets its partitions back with no rebalance. Default none.
    pub group_instance_id: Option<String>,
    /// The coordinator's assignor this member asks for: `uniform` (sticky: balanced, moving as
    /// few partitions as it can), `range` or `roundrobin`. The first member of an empty group
    /// decides. Default none: the coordinator's default, `uniform`.
    pub group_assignor: Option<String>,
    /// Longest time between two `poll` calls of a group member (Kafka's
    /// `max.poll.interval.ms`): past it the member leaves the group and its partitions go to
    /// others; the next `poll` joins again (its partitions are reported lost). Default 5 min.
    pub max_poll_interval: Duration,
    /// When a group member commits offsets. Default [`DeliveryGuarantee::AtLeastOnce`].
    pub delivery: DeliveryGuarantee,
    /// With at-least-once, commit automatically (at `poll`, before releasing partitions and
    /// on `close`); off: the application calls `commit`. Default on.
    pub auto_commit: bool,
    /// Least time between two automatic commits at `poll`. Default 1 s.
    pub auto_commit_interval: Duration,
}

impl ConsumerConfig {
    pub fn new(client: ClientConfig) -> ConsumerConfig {
        ConsumerConfig {
            client,
            fetch_bytes_max: 16 << 20,
            partition_fetch_bytes_max: 4 << 20,
            fetch_bytes_min: 1,
            fetch_wait_max: Duration::from_millis(500),
            auto_offset_reset: OffsetReset::Latest,
            poll_records_max: 10_000,
            group_session_timeout: Duration::from_secs(45),
            group_instance_id: None,
            group_assignor: None,
            max_poll_interval: Duration::from_secs(300),
            delivery: DeliveryGuarantee::AtLeastOnce,
            auto_commit: true,
            auto_commit_interval: Duration::from_secs(1),
        }
    }

    pub fn group_session_timeout(mut self, timeout: Duration) -> Self {
        self.group_session_timeout = timeout;
        self
    }
    pub fn group_instance_id(mut self, id: impl Into<String>) -> Self {
        self.group_instance_id = Some(id.into());
        self
    }
    pub fn group_assignor(mut self, assignor: impl Into<String>) -> Self {
        self.group_assignor = Some(assignor.into());
        self
    }
    pub fn max_poll_interval(mut self, interval: Duration) -> Self {
        self.max_poll_interval = interval;
        self
    }
    pub fn delivery(mut self, delivery: DeliveryGuarantee) -> Self {
        self.delivery = delivery;
        self
    }
    pub fn auto_commit(mut self, on: bool) -> Self {
        self.auto_commit = on;
        self
    }
    pub fn auto_commit_interval(mut self, interval: Duration) -> Self {
        self.auto_commit_interval = interval;
        self
    }

    pub fn fetch_bytes_max(mut self, bytes: usize) -> Self {
        self.fetch_bytes_max = bytes;
        self
    }
    pub fn partition_fetch_bytes_max(mut self, bytes: usize) -> Self {
        self.partition_fetch_bytes_max = bytes;
        self
    }
    pub fn fetch_bytes_min(mut self, bytes: usize) -> Self {
        self.fetch_bytes_min = bytes;
        self
    }
    pub fn fetch_wait_max(mut self, wait: Duration) -> Self {
        self.fetch_wait_max = wait;
        self
    }
    pub fn auto_offset_reset(mut self, reset: OffsetReset) -> Self {
        self.auto_offset_reset = reset;
        self
    }
    pub fn poll_records_max(mut self, records: usize) -> Self {
        self.poll_records_max = records;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        self.client.validate()?;
        if self.fetch_bytes_max == 0 || self.partition_fetch_bytes_max == 0 {
            return Err(Error::Config("fetch sizes must be positive".into()));
        }
        if self.fetch_bytes_max > REQUEST_FRAME_BYTES_MAX - (1 << 20) {
            return Err(Error::Config(format!(
                "fetch_bytes_max {} exceeds the frame limit",
                self.fetch_bytes_max
            )));
        }
        if self.poll_records_max == 0 {
            return Err(Error::Config("poll_records_max must be positive".into()));
        }
        let wait_ms = self.fetch_wait_max.as_millis();
        if wait_ms > u128::from(u32::MAX) || self.fetch_wait_max >= self.client.request_timeout {
            return Err(Error::Config(
                "fetch_wait_max must be shorter than request_timeout".into(),
            ));
        }
        Ok(())
    }
}
