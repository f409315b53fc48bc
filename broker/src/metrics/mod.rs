//! Metrics: what a broker counts and how `GET /metrics` shows it (Prometheus/OpenMetrics text,
//! encoded by `prometheus-client`).
//!
//! **Thread-per-core counting.** Each shard owns a [`ShardMetrics`] (plain `Cell`s and
//! [`histogram::LocalHistogram`]s behind an `Rc`) and each partition replica a
//! [`PartitionCounters`]; only the owning shard updates them, so the produce and fetch paths
//! take no lock and touch no shared atomic. Logs keep their own flush statistics
//! (`storage::LogStats`, `FlushHistograms`), read at scrape time. A scrape asks every shard for a
//! [`snapshot::ShardSnapshot`] (plain data) over a bounded channel; the shard builds it in its
//! maintenance queue, and the metadata thread merges the snapshots with the Raft status and
//! encodes them ([`exposition`]). The HTTP listener ([`http`]) runs on the metadata thread's
//! tokio runtime, never on a shard.
//!
//! **Monotonic counters.** A log closed on this shard (its topic deleted, or moved) takes its
//! counts with it unless they are kept: [`ShardMetrics::retire`] folds a closing log's flush
//! counts into the shard's totals, so shard-level counters never go back.
//!
//! Names, labels and meanings: `docs/operations.md`.

pub mod exposition;
pub mod histogram;
pub mod http;
pub mod latency;
pub mod snapshot;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Instant;

use sluice_protocol::native::{ApiKey, ErrorCode};

use crate::server::connection::RequestApi;
use crate::storage::{LogStats, PartitionLog};
use histogram::{HistogramSnapshot, LocalHistogram, LATENCY_BOUNDS_SECONDS, SIZE_BOUNDS_BYTES};

/// One partition replica's traffic on this shard, since the shard opened its log.
#[derive(Debug, Default)]
pub struct PartitionCounters {
    /// Records and bytes of batches appended by producers (not replicated appends).
    pub records_in: Cell<u64>,
    pub bytes_in: Cell<u64>,
    /// Bytes of batches sent to consumers by Fetch.
    pub bytes_out: Cell<u64>,
    /// Bytes of batches sent to follower replicas by ReplicaFetch.
    pub replica_bytes_out: Cell<u64>,
}

impl PartitionCounters {
    pub fn produced(&self, records: u64, bytes: u64) {
        self.records_in.set(self.records_in.get() + records);
        self.bytes_in.set(self.bytes_in.get() + bytes);
    }

    pub fn fetched(&self, bytes: u64) {
        self.bytes_out.set(self.bytes_out.get() + bytes);
    }

    pub fn replica_fetched(&self, bytes: u64) {
        self.replica_bytes_out
            .set(self.replica_bytes_out.get() + bytes);
    }
}

/// Slot of an API in the per-API arrays (the order of `ApiKey::ALL`).
fn api_slot(api: ApiKey) -> usize {
    ApiKey::ALL
        .iter()
        .position(|k| *k == api)
        .expect("invariant: ApiKey::ALL lists every key")
}

/// Flush figures of logs no longer open on this shard.
#[derive(Debug, Clone, PartialEq)]
pub struct RetiredLogs {
    pub stats: LogStats,
    pub flush_bytes: HistogramSnapshot,
    pub write_seconds: HistogramSnapshot,
    pub sync_seconds: HistogramSnapshot,
}

impl Default for RetiredLogs {
    fn default() -> Self {
        RetiredLogs {
            stats: LogStats::default(),
            flush_bytes: HistogramSnapshot::empty(SIZE_BOUNDS_BYTES),
            write_seconds: HistogramSnapshot::empty(LATENCY_BOUNDS_SECONDS),
            sync_seconds: HistogramSnapshot::empty(LATENCY_BOUNDS_SECONDS),
        }
    }
}

/// What one shard counts. Only its own thread touches it.
#[derive(Debug)]
pub struct ShardMetrics {
    /// Requests handled, by API (slot of `ApiKey::ALL`).
    requests: Box<[Cell<u64>]>,
    /// Frame-in to response-out, by API.
    latency: Box<[LocalHistogram]>,
    /// Errors answered, by API and code (a partition's error counts once per partition; a
    /// refused frame once, under `api = "unknown"` when its API is not known). Touched only
    /// on the error path.
    errors: RefCell<BTreeMap<(&'static str, &'static str), u64>>,
    pub connections_accepted: Cell<u64>,
    pub connections_open: Cell<u64>,
    /// Bytes of responses written from memory and sent from files with `sendfile`.
    pub response_bytes: Cell<u64>,
    pub sendfile_bytes: Cell<u64>,
    retired: RefCell<RetiredLogs>,
    /// Produce requests' frame-in to response-out, exactly (`latency.rs`).
    pub produce_latency: latency::LatencyRecorder,
    /// Kafka-listener requests handled and their frame-in to response-out, by Kafka API (only
    /// the APIs served: at most `kafka::versions`' table).
    kafka: RefCell<BTreeMap<i16, (u64, LocalHistogram)>>,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            requests: ApiKey::ALL.iter().map(|_| Cell::new(0)).collect(),
            latency: ApiKey::ALL
                .iter()
                .map(|_| LocalHistogram::new(LATENCY_BOUNDS_SECONDS))
                .collect(),
            errors: RefCell::default(),
            connections_accepted: Cell::new(0),
            connections_open: Cell::new(0),
            response_bytes: Cell::new(0),
            sendfile_bytes: Cell::new(0),
            retired: RefCell::default(),
            produce_latency: latency::LatencyRecorder::new(),
            kafka: RefCell::default(),
        }
    }
}

fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get() + n);
}

impl ShardMetrics {
    /// A request of `api` answered (or, for `acks = None`, finished) `started` after its frame
    /// arrived.
    pub(crate) fn request_done(&self, api: RequestApi, started: Instant) {
        match api {
            RequestApi::Native(key) => self.native_request_done(key, started),
            RequestApi::Kafka(key) => {
                let mut kafka = self.kafka.borrow_mut();
                let (count, latency) = kafka
                    .entry(key as i16)
                    .or_insert_with(|| (0, LocalHistogram::new(LATENCY_BOUNDS_SECONDS)));
                *count += 1;
                latency.observe(started.elapsed().as_secs_f64());
            }
        }
    }

    /// Kafka-listener requests by API name: (name, count, latency).
    pub fn kafka_requests(&self) -> Vec<(String, u64, HistogramSnapshot)> {
        self.kafka
            .borrow()
            .iter()
            .map(|(key, (count, latency))| {
                let name = kafka_protocol::messages::ApiKey::try_from(*key)
                    .map_or_else(|()| key.to_string(), |api| format!("{api:?}"));
                (name, *count, latency.snapshot())
            })
            .collect()
    }

    fn native_request_done(&self, api_key: u16, started: Instant) {
        let Some(api) = ApiKey::from_u16(api_key) else {
            return;
        };
        let slot = api_slot(api);
        let elapsed = started.elapsed();
        add(&self.requests[slot], 1);
        self.latency[slot].observe(elapsed.as_secs_f64());
        if api == ApiKey::Produce {
            self.produce_latency.record(elapsed);
        }
    }

    /// An error code answered for `api` (`None`: a frame whose API is unknown).
    pub fn error(&self, api: Option<ApiKey>, code: &'static str) {
        let api = api.map_or("unknown", ApiKey::name);
        *self.errors.borrow_mut().entry((api, code)).or_default() += 1;
    }

    /// [`Self::error`] for a per-partition error code (`None` is not an error).
    pub fn error_code(&self, api: ApiKey, code: ErrorCode) {
        if code != ErrorCode::None {
            self.error(Some(api), error_code_name(code));
        }
    }

    pub fn connection_opened(&self) {
        add(&self.connections_accepted, 1);
        add(&self.connections_open, 1);
    }

    pub fn connection_closed(&self) {
        self.connections_open
            .set(self.connections_open.get().saturating_sub(1));
    }

    pub fn sent(&self, memory_bytes: u64, file_bytes: u64) {
        add(&self.response_bytes, memory_bytes);
        add(&self.sendfile_bytes, file_bytes);
    }

    /// Keeps a closing log's flush figures in the shard's totals.
    pub fn retire(&self, log: &PartitionLog) {
        let stats = log.stats();
        let hist = log.flush_histograms();
        let mut retired = self.retired.borrow_mut();
        let r = &mut retired.stats;
        r.appends += stats.appends;
        r.writes += stats.writes;
        r.syncs += stats.syncs;
        r.bytes_written += stats.bytes_written;
        r.write_us += stats.write_us;
        r.sync_us += stats.sync_us;
        r.rolls += stats.rolls;
        r.roll_us += stats.roll_us;
        r.cache_hits += stats.cache_hits;
        r.disk_reads += stats.disk_reads;
        retired.flush_bytes.merge(&hist.bytes);
        retired.write_seconds.merge(&hist.write_seconds);
        retired.sync_seconds.merge(&hist.sync_seconds);
    }
}

/// The name an error code has in metrics labels (its Rust name).
pub fn error_code_name(code: ErrorCode) -> &'static str {
    code.name()
}
