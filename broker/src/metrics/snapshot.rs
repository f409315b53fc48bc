//! What leaves a shard at a scrape: a [`ShardSnapshot`] of plain data, built on the shard from
//! its own counters and logs, and the metadata thread's [`MetadataSnapshot`].

use std::rc::Rc;
use std::sync::Arc;

use super::histogram::{HistogramSnapshot, LATENCY_BOUNDS_SECONDS, SIZE_BOUNDS_BYTES};
use super::latency::{with_flush_device, EXPOSED_QUANTILES};
use crate::groups::coordinator::GroupMetrics;
use crate::metadata::types::BrokerState;
use crate::metadata::{ClusterState, NodeId};
use crate::server::context::ShardContext;
use crate::server::RaftStatus;
use crate::storage::LogStats;
use sluice_protocol::native::ApiKey;

/// One partition replica on a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSnapshot {
    pub topic: String,
    pub partition: u32,
    pub leader: bool,
    pub records_in: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub replica_bytes_out: u64,
    pub log_start: u64,
    pub log_end: u64,
    pub high_watermark: u64,
    pub size_bytes: u64,
    /// Only meaningful on the leader: the partition's replicas, its in-sync set, and the
    /// in-sync minimum `acks=all` needs.
    pub replicas: u32,
    pub in_sync: u32,
    pub min_insync: u32,
}

/// One shard's counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSnapshot {
    pub shard: u32,
    /// By API name: requests handled and their frame-in to response-out latency.
    pub requests: Vec<(&'static str, u64, HistogramSnapshot)>,
    /// The same for the Kafka listener, by Kafka API name.
    pub kafka_requests: Vec<(String, u64, HistogramSnapshot)>,
    /// (api, code, count).
    pub errors: Vec<(&'static str, &'static str, u64)>,
    pub connections_accepted: u64,
    pub connections_open: u64,
    pub buffered_bytes: u64,
    pub response_bytes: u64,
    pub sendfile_bytes: u64,
    pub socket_reads_recovered: u64,
    pub socket_writes_recovered: u64,
    /// Every log's flush counts (open and retired) summed.
    pub logs: LogStats,
    pub flush_bytes: HistogramSnapshot,
    pub write_seconds: HistogramSnapshot,
    pub sync_seconds: HistogramSnapshot,
    pub cache_bytes: u64,
    /// The shard's sync rounds (`storage/sync.rs`).
    pub sync: crate::storage::sync::SyncStats,
    /// Produce requests' and flushes' exact latencies at `latency::EXPOSED_QUANTILES`, seconds.
    pub produce_quantiles: Vec<f64>,
    pub flush_device_quantiles: Vec<f64>,
    pub partitions: Vec<PartitionSnapshot>,
    /// The groups this shard coordinates (bounded by `limits::GROUP_OFFSET_SERIES_MAX`), and
    /// how many committed offsets that bound left out.
    pub groups: Vec<GroupMetrics>,
    pub group_offsets_omitted: u64,
}

fn add_stats(total: &mut LogStats, s: &LogStats) {
    total.appends += s.appends;
    total.writes += s.writes;
    total.syncs += s.syncs;
    total.bytes_written += s.bytes_written;
    total.write_us += s.write_us;
    total.sync_us += s.sync_us;
    total.rolls += s.rolls;
    total.roll_us += s.roll_us;
    total.cache_hits += s.cache_hits;
    total.disk_reads += s.disk_reads;
}

/// Builds the shard's snapshot (on the shard). Yields now and then: 10,000 partitions must not
/// hold the shard for long.
pub async fn shard_snapshot(ctx: &ShardContext) -> ShardSnapshot {
    let m = &ctx.metrics;
    let retired = m.retired.borrow().clone();
    let mut logs = retired.stats;
    let mut flush_bytes = retired.flush_bytes;
    let mut write_seconds = retired.write_seconds;
    let mut sync_seconds = retired.sync_seconds;
    let mut cache_bytes = 0u64;
    let mut partitions = Vec::new();
    for (i, ((topic, partition), owned)) in ctx.partitions.all().into_iter().enumerate() {
        if i % 256 == 255 {
            glommio::yield_if_needed().await;
        }
        let log = &owned.log;
        add_stats(&mut logs, &log.stats());
        let hist = log.flush_histograms();
        flush_bytes.merge(&hist.bytes);
        write_seconds.merge(&hist.write_seconds);
        sync_seconds.merge(&hist.sync_seconds);
        cache_bytes += log.cache_bytes() as u64;
        let c = &owned.counters;
        partitions.push(PartitionSnapshot {
            topic,
            partition,
            leader: owned.leader,
            records_in: c.records_in.get(),
            bytes_in: c.bytes_in.get(),
            bytes_out: c.bytes_out.get(),
            replica_bytes_out: c.replica_bytes_out.get(),
            log_start: log.log_start(),
            log_end: log.next_offset(),
            high_watermark: log.high_watermark(),
            size_bytes: log.size_bytes(),
            replicas: owned.info.replicas.len() as u32,
            in_sync: owned.in_sync().len() as u32,
            min_insync: owned.min_insync,
        });
    }
    let requests = ApiKey::ALL
        .iter()
        .enumerate()
        .map(|(slot, api)| {
            (
                api.name(),
                m.requests[slot].get(),
                m.latency[slot].snapshot(),
            )
        })
        .collect();
    let errors = m
        .errors
        .borrow()
        .iter()
        .map(|((api, code), n)| (*api, *code, *n))
        .collect();
    let buffered_max = crate::limits::SHARD_BUFFERED_BYTES_MAX;
    let (groups, group_offsets_omitted) = ctx
        .groups
        .metrics_snapshot(crate::limits::GROUP_OFFSET_SERIES_MAX);
    ShardSnapshot {
        shard: ctx.shard,
        requests,
        kafka_requests: m.kafka_requests(),
        errors,
        connections_accepted: m.connections_accepted.get(),
        connections_open: m.connections_open.get(),
        buffered_bytes: buffered_max.saturating_sub(ctx.buffered.available()),
        response_bytes: m.response_bytes.get(),
        sendfile_bytes: m.sendfile_bytes.get(),
        socket_reads_recovered: ctx.watch_stats.reads_recovered.get(),
        socket_writes_recovered: ctx.watch_stats.writes_recovered.get(),
        logs,
        flush_bytes,
        write_seconds,
        sync_seconds,
        cache_bytes,
        sync: crate::storage::sync::shard_sync_stats(),
        produce_quantiles: m.produce_latency.quantiles_seconds(&EXPOSED_QUANTILES),
        flush_device_quantiles: with_flush_device(|r| r.quantiles_seconds(&EXPOSED_QUANTILES)),
        partitions,
        groups,
        group_offsets_omitted,
    }
}

impl ShardSnapshot {
    /// A snapshot with nothing counted (for tests of the exposition).
    pub fn empty(shard: u32) -> ShardSnapshot {
        ShardSnapshot {
            shard,
            requests: Vec::new(),
            kafka_requests: Vec::new(),
            errors: Vec::new(),
            connections_accepted: 0,
            connections_open: 0,
            buffered_bytes: 0,
            response_bytes: 0,
            sendfile_bytes: 0,
            socket_reads_recovered: 0,
            socket_writes_recovered: 0,
            logs: LogStats::default(),
            flush_bytes: HistogramSnapshot::empty(SIZE_BOUNDS_BYTES),
            write_seconds: HistogramSnapshot::empty(LATENCY_BOUNDS_SECONDS),
            sync_seconds: HistogramSnapshot::empty(LATENCY_BOUNDS_SECONDS),
            cache_bytes: 0,
            sync: Default::default(),
            produce_quantiles: vec![0.0; EXPOSED_QUANTILES.len()],
            flush_device_quantiles: vec![0.0; EXPOSED_QUANTILES.len()],
            partitions: Vec::new(),
            groups: Vec::new(),
            group_offsets_omitted: 0,
        }
    }
}

/// The metadata Raft group and the cluster as this broker sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataSnapshot {
    pub node_id: NodeId,
    pub raft: RaftStatus,
    pub version: u64,
    /// Brokers by state name.
    pub brokers: Vec<(&'static str, u64)>,
    /// Partitions with no leader, cluster-wide.
    pub offline_partitions: u64,
}

impl MetadataSnapshot {
    pub fn new(node_id: NodeId, raft: RaftStatus, state: &Arc<ClusterState>) -> MetadataSnapshot {
        let count = |wanted: BrokerState| {
            state.brokers.values().filter(|b| b.state == wanted).count() as u64
        };
        MetadataSnapshot {
            node_id,
            raft,
            version: state.version,
            brokers: vec![
                ("alive", count(BrokerState::Alive)),
                ("fenced", count(BrokerState::Fenced)),
                ("dead", count(BrokerState::Dead)),
            ],
            offline_partitions: state
                .topics
                .values()
                .flat_map(|t| &t.partitions)
                .filter(|p| p.leader.is_none())
                .count() as u64,
        }
    }
}

/// A request for a shard's snapshot: where to send it.
pub type SnapshotRequest = flume::Sender<ShardSnapshot>;

/// Serves snapshot requests on the shard until the channel closes.
pub async fn serve_snapshots(ctx: Rc<ShardContext>, requests: flume::Receiver<SnapshotRequest>) {
    while let Ok(reply) = requests.recv_async().await {
        let snapshot = shard_snapshot(&ctx).await;
        let _ = reply.try_send(snapshot);
    }
}
