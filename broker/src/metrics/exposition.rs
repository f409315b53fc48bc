//! Encodes a scrape (every shard's snapshot and the metadata snapshot) in the OpenMetrics text
//! format with `prometheus-client`'s encoder. Every family is written once, its samples from
//! all shards together, so names never repeat; counters get the `_total` suffix from the
//! encoder.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::histogram::HistogramSnapshot;
use super::latency::EXPOSED_QUANTILES;
use super::snapshot::{MetadataSnapshot, ShardSnapshot};
use crate::groups::coordinator::GroupMetrics;

/// Everything one scrape shows.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub shards: Vec<ShardSnapshot>,
    /// Shards that did not answer in time.
    pub shards_missing: u64,
    pub metadata: MetadataSnapshot,
}

type Labels = Vec<(&'static str, String)>;

/// One sample's value.
enum Value<'a> {
    Counter(u64),
    Gauge(i64),
    GaugeF64(f64),
    Histogram(&'a HistogramSnapshot),
}

/// Writes one family: its descriptor and every sample.
fn family<'a, L: std::borrow::Borrow<Labels>>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, Value<'a>)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let labels: &Labels = labels.borrow();
        if labels.is_empty() {
            put(&mut metric, value)?;
        } else {
            put(&mut metric.encode_family(labels)?, value)?;
        }
    }
    Ok(())
}

fn put(sample: &mut MetricEncoder<'_>, value: Value<'_>) -> fmt::Result {
    match value {
        Value::Counter(v) => sample.encode_counter::<NoLabelSet, _, u64>(&v, None),
        Value::Gauge(v) => sample.encode_gauge(&v),
        Value::GaugeF64(v) => sample.encode_gauge(&v),
        Value::Histogram(h) => {
            sample.encode_histogram::<NoLabelSet>(h.sum, h.count(), &h.buckets(), None)
        }
    }
}

fn shard_label(s: &ShardSnapshot) -> Labels {
    vec![("shard", s.shard.to_string())]
}

impl Scrape {
    /// The whole exposition, `# EOF` included.
    pub fn encode(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Collector(self)));
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a label.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }
}

#[derive(Debug)]
struct Collector(Scrape);

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let scrape = &self.0;
        let shards = &scrape.shards;
        let per_shard = |f: &dyn Fn(&ShardSnapshot) -> u64| -> Vec<(Labels, Value<'_>)> {
            shards
                .iter()
                .map(|s| (shard_label(s), Value::Counter(f(s))))
                .collect()
        };
        let gauge_per_shard = |f: &dyn Fn(&ShardSnapshot) -> u64| -> Vec<(Labels, Value<'_>)> {
            shards
                .iter()
                .map(|s| (shard_label(s), Value::Gauge(f(s) as i64)))
                .collect()
        };
        use MetricType::{Counter, Gauge, Histogram};

        // Requests.
        family(
            &mut e,
            "sluice_requests",
            "Native-protocol requests handled, by shard and API.",
            Counter,
            shards.iter().flat_map(|s| {
                s.requests.iter().map(move |(api, n, _)| {
                    let mut l = shard_label(s);
                    l.push(("api", api.to_string()));
                    (l, Value::Counter(*n))
                })
            }),
        )?;
        family(
            &mut e,
            "sluice_request_errors",
            "Error codes answered, by shard, API and code (per partition for partitioned APIs).",
            Counter,
            shards.iter().flat_map(|s| {
                s.errors.iter().map(move |(api, code, n)| {
                    let mut l = shard_label(s);
                    l.push(("api", api.to_string()));
                    l.push(("code", code.to_string()));
                    (l, Value::Counter(*n))
                })
            }),
        )?;
        family(
            &mut e,
            "sluice_request_duration_seconds",
            "Frame in to response out (Produce: to the acknowledgement), by shard and API.",
            Histogram,
            shards.iter().flat_map(|s| {
                s.requests
                    .iter()
                    .filter(|(_, n, _)| *n > 0)
                    .map(move |(api, _, h)| {
                        let mut l = shard_label(s);
                        l.push(("api", api.to_string()));
                        (l, Value::Histogram(h))
                    })
            }),
        )?;
        family(
            &mut e,
            "sluice_kafka_requests",
            "Kafka-protocol requests handled, by shard and Kafka API.",
            Counter,
            shards.iter().flat_map(|s| {
                s.kafka_requests.iter().map(move |(api, n, _)| {
                    let mut l = shard_label(s);
                    l.push(("api", api.clone()));
                    (l, Value::Counter(*n))
                })
            }),
        )?;
        family(
            &mut e,
            "sluice_kafka_request_duration_seconds",
            "Kafka-protocol frame in to response out (Produce: to the acknowledgement), by shard and Kafka API.",
            Histogram,
            shards.iter().flat_map(|s| {
                s.kafka_requests.iter().map(move |(api, _, h)| {
                    let mut l = shard_label(s);
                    l.push(("api", api.clone()));
                    (l, Value::Histogram(h))
                })
            }),
        )?;
        // Connections and buffers.
        family(
            &mut e,
            "sluice_connections_accepted",
            "Client connections accepted.",
            Counter,
            per_shard(&|s| s.connections_accepted),
        )?;
        family(
            &mut e,
            "sluice_connections_open",
            "Client connections open now.",
            Gauge,
            gauge_per_shard(&|s| s.connections_open),
        )?;
        family(
            &mut e,
            "sluice_buffered_request_bytes",
            "Bytes of request frames being handled (bounded by SHARD_BUFFERED_BYTES_MAX).",
            Gauge,
            gauge_per_shard(&|s| s.buffered_bytes),
        )?;
        family(
            &mut e,
            "sluice_response_bytes",
            "Response bytes written from memory.",
            Counter,
            per_shard(&|s| s.response_bytes),
        )?;
        family(
            &mut e,
            "sluice_sendfile_bytes",
            "Response bytes sent from segment files with sendfile.",
            Counter,
            per_shard(&|s| s.sendfile_bytes),
        )?;
        family(
            &mut e,
            "sluice_socket_watchdog_recoveries",
            "Lost socket readiness events the connection watchdog recovered, by direction.",
            Counter,
            shards.iter().flat_map(|s| {
                [
                    ("read", s.socket_reads_recovered),
                    ("write", s.socket_writes_recovered),
                ]
                .map(|(d, n)| {
                    let mut l = shard_label(s);
                    l.push(("direction", d.to_string()));
                    (l, Value::Counter(n))
                })
            }),
        )?;
        // Storage.
        family(
            &mut e,
            "sluice_log_appends",
            "Batches appended to this shard's logs.",
            Counter,
            per_shard(&|s| s.logs.appends),
        )?;
        family(
            &mut e,
            "sluice_log_flushes",
            "Flushes (one DMA write each) of this shard's logs.",
            Counter,
            per_shard(&|s| s.logs.writes),
        )?;
        family(
            &mut e,
            "sluice_log_fdatasyncs",
            "Flushes made durable (each in a sync round).",
            Counter,
            per_shard(&|s| s.logs.syncs),
        )?;
        family(
            &mut e,
            "sluice_log_sync_rounds",
            "Sync rounds shared by this shard's flushing logs: an fdatasync per file for a few, one syncfs for many.",
            Counter,
            per_shard(&|s| s.sync.fdatasync_rounds + s.sync.syncfs_rounds),
        )?;
        family(
            &mut e,
            "sluice_log_syncfs_rounds",
            "Sync rounds that were one syncfs of the file system for all their logs.",
            Counter,
            per_shard(&|s| s.sync.syncfs_rounds),
        )?;
        family(
            &mut e,
            "sluice_log_written_bytes",
            "Bytes handed to the device by flushes (block padding and rewrites included).",
            Counter,
            per_shard(&|s| s.logs.bytes_written),
        )?;
        family(
            &mut e,
            "sluice_log_flush_size_bytes",
            "Size of each flush's write.",
            Histogram,
            shards
                .iter()
                .map(|s| (shard_label(s), Value::Histogram(&s.flush_bytes))),
        )?;
        family(
            &mut e,
            "sluice_log_write_duration_seconds",
            "Duration of each flush's DMA write.",
            Histogram,
            shards
                .iter()
                .map(|s| (shard_label(s), Value::Histogram(&s.write_seconds))),
        )?;
        family(
            &mut e,
            "sluice_log_fdatasync_duration_seconds",
            "Duration of each fdatasync.",
            Histogram,
            shards
                .iter()
                .map(|s| (shard_label(s), Value::Histogram(&s.sync_seconds))),
        )?;
        family(
            &mut e,
            "sluice_latency_quantile_seconds",
            "Exact latency quantiles since the shard started: `of` = produce (a produce request \
             from its frame's first byte read to its response's last byte written) or \
             flush_device (each flush's device write, plus its fdatasync when apart).",
            Gauge,
            shards.iter().flat_map(|s| {
                [
                    ("produce", &s.produce_quantiles),
                    ("flush_device", &s.flush_device_quantiles),
                ]
                .into_iter()
                .flat_map(move |(of, values)| {
                    EXPOSED_QUANTILES
                        .iter()
                        .zip(values.iter())
                        .map(move |(q, v)| {
                            let mut l = shard_label(s);
                            l.push(("of", of.to_string()));
                            l.push(("quantile", q.to_string()));
                            (l, Value::GaugeF64(*v))
                        })
                })
            }),
        )?;
        family(
            &mut e,
            "sluice_log_rolls",
            "Segment rolls.",
            Counter,
            per_shard(&|s| s.logs.rolls),
        )?;
        family(
            &mut e,
            "sluice_log_cache_hits",
            "Reads answered from the tail cache.",
            Counter,
            per_shard(&|s| s.logs.cache_hits),
        )?;
        family(
            &mut e,
            "sluice_log_disk_reads",
            "Reads that went to a segment file.",
            Counter,
            per_shard(&|s| s.logs.disk_reads),
        )?;
        family(
            &mut e,
            "sluice_log_cache_bytes",
            "Bytes held by the tail caches.",
            Gauge,
            gauge_per_shard(&|s| s.cache_bytes),
        )?;
        family(
            &mut e,
            "sluice_shard_partitions",
            "Partition replicas this shard holds.",
            Gauge,
            gauge_per_shard(&|s| s.partitions.len() as u64),
        )?;
        // Partitions.
        let partitions = || shards.iter().flat_map(|s| s.partitions.iter());
        // Each partition's labels, made once for all its families (10,000 partitions make
        // 120,000 samples).
        let labels = |p: &super::snapshot::PartitionSnapshot| -> Labels {
            vec![
                ("topic", p.topic.clone()),
                ("partition", p.partition.to_string()),
            ]
        };
        let partition_labels: Vec<Labels> = partitions().map(labels).collect();
        type PartitionValue = fn(&super::snapshot::PartitionSnapshot) -> u64;
        let partition_families: [(&str, &str, MetricType, PartitionValue); 9] = [
            (
                "sluice_partition_records_in",
                "Records producers appended to the partition on this broker.",
                Counter,
                |p| p.records_in,
            ),
            (
                "sluice_partition_bytes_in",
                "Bytes of batches producers appended to the partition.",
                Counter,
                |p| p.bytes_in,
            ),
            (
                "sluice_partition_bytes_out",
                "Bytes of batches sent to consumers (Fetch).",
                Counter,
                |p| p.bytes_out,
            ),
            (
                "sluice_partition_replica_bytes_out",
                "Bytes of batches sent to follower replicas (ReplicaFetch).",
                Counter,
                |p| p.replica_bytes_out,
            ),
            (
                "sluice_partition_log_start_offset",
                "First offset still in the log.",
                Gauge,
                |p| p.log_start,
            ),
            (
                "sluice_partition_log_end_offset",
                "Offset the next record appended gets.",
                Gauge,
                |p| p.log_end,
            ),
            (
                "sluice_partition_high_watermark",
                "Consumers read below it.",
                Gauge,
                |p| p.high_watermark,
            ),
            (
                "sluice_partition_size_bytes",
                "Bytes of the partition's segment files.",
                Gauge,
                |p| p.size_bytes,
            ),
            (
                "sluice_partition_leader",
                "1 when this broker leads the partition, else 0.",
                Gauge,
                |p| u64::from(p.leader),
            ),
        ];
        for (name, help, kind, value) in partition_families {
            family(
                &mut e,
                name,
                help,
                kind,
                partitions().zip(&partition_labels).map(|(p, l)| {
                    let v = value(p);
                    let v = match kind {
                        MetricType::Counter => Value::Counter(v),
                        _ => Value::Gauge(v as i64),
                    };
                    (l, v)
                }),
            )?;
        }
        let leading = || partitions().filter(|p| p.leader);
        let leading_labelled = || {
            partitions()
                .zip(&partition_labels)
                .filter(|(p, _)| p.leader)
        };
        let leader_families: [(&str, &str, PartitionValue); 3] = [
            (
                "sluice_partition_replicas",
                "Replicas of a partition this broker leads.",
                |p| u64::from(p.replicas),
            ),
            (
                "sluice_partition_in_sync_replicas",
                "Size of the in-sync set of a partition this broker leads.",
                |p| u64::from(p.in_sync),
            ),
            (
                "sluice_partition_under_min_in_sync",
                "1 when the in-sync set is smaller than min.insync.replicas (acks=all refused).",
                |p| u64::from(p.in_sync < p.min_insync),
            ),
        ];
        for (name, help, value) in leader_families {
            family(
                &mut e,
                name,
                help,
                Gauge,
                leading_labelled().map(|(p, l)| (l, Value::Gauge(value(p) as i64))),
            )?;
        }
        family(
            &mut e,
            "sluice_under_replicated_partitions",
            "Partitions this broker leads whose in-sync set is smaller than their replicas.",
            Gauge,
            [(
                Labels::new(),
                Value::Gauge(leading().filter(|p| p.in_sync < p.replicas).count() as i64),
            )],
        )?;
        // Groups, on the shard coordinating each. Lag where this broker leads the partition
        // (its high watermark is known here); elsewhere the series is left out, not guessed.
        let high_watermarks: std::collections::HashMap<(&str, u32), u64> = leading()
            .map(|p| ((p.topic.as_str(), p.partition), p.high_watermark))
            .collect();
        let groups = || shards.iter().flat_map(|s| s.groups.iter());
        let group_label = |g: &GroupMetrics| -> Labels { vec![("group", g.group.clone())] };
        family(
            &mut e,
            "sluice_group_members",
            "Members of a consumer group this broker coordinates.",
            Gauge,
            groups().map(|g| (group_label(g), Value::Gauge(i64::from(g.members)))),
        )?;
        family(
            &mut e,
            "sluice_group_rebalances",
            "Rebalances of a consumer group (its group epoch, bumped at every membership or \
             subscription change).",
            Counter,
            groups().map(|g| (group_label(g), Value::Counter(u64::from(g.group_epoch)))),
        )?;
        let offsets = || {
            groups().flat_map(|g| {
                g.offsets.iter().map(move |(topic, partition, committed)| {
                    let labels: Labels = vec![
                        ("group", g.group.clone()),
                        ("topic", topic.clone()),
                        ("partition", partition.to_string()),
                    ];
                    (labels, topic.as_str(), *partition, *committed)
                })
            })
        };
        family(
            &mut e,
            "sluice_group_committed_offset",
            "A consumer group's committed offset of a partition.",
            Gauge,
            offsets().map(|(l, _, _, committed)| (l, Value::Gauge(committed as i64))),
        )?;
        family(
            &mut e,
            "sluice_group_lag",
            "Records of a partition after a group's committed offset (high watermark minus \
             committed), where this broker leads the partition.",
            Gauge,
            offsets().filter_map(|(l, topic, partition, committed)| {
                let end = high_watermarks.get(&(topic, partition))?;
                Some((l, Value::Gauge(end.saturating_sub(committed) as i64)))
            }),
        )?;
        family(
            &mut e,
            "sluice_group_offsets_omitted",
            "Committed offsets left out of this scrape by the per-shard series bound.",
            Gauge,
            gauge_per_shard(&|s| s.group_offsets_omitted),
        )?;
        // Metadata.
        let m = &scrape.metadata;
        let single = |v: i64| [(Labels::new(), Value::Gauge(v))];
        family(
            &mut e,
            "sluice_offline_partitions",
            "Partitions without a leader, cluster-wide, as this broker's metadata says.",
            Gauge,
            single(m.offline_partitions as i64),
        )?;
        family(
            &mut e,
            "sluice_metadata_raft_term",
            "Current Raft term of the metadata group.",
            Gauge,
            single(m.raft.term as i64),
        )?;
        family(
            &mut e,
            "sluice_metadata_controller_id",
            "Node id of the controller (Raft leader) this broker knows of; -1 when none.",
            Gauge,
            single(m.raft.controller.map_or(-1, |c| c as i64)),
        )?;
        family(
            &mut e,
            "sluice_metadata_is_controller",
            "1 on the controller, else 0.",
            Gauge,
            single(i64::from(m.raft.controller == Some(m.node_id))),
        )?;
        family(
            &mut e,
            "sluice_metadata_raft_last_log_index",
            "Index of the last entry in this broker's Raft log.",
            Gauge,
            single(m.raft.last_log_index as i64),
        )?;
        family(
            &mut e,
            "sluice_metadata_raft_applied_index",
            "Index of the last Raft entry applied to this broker's metadata.",
            Gauge,
            single(m.raft.applied_index as i64),
        )?;
        family(
            &mut e,
            "sluice_metadata_version",
            "Version of the metadata this broker has applied.",
            Gauge,
            single(m.version as i64),
        )?;
        family(
            &mut e,
            "sluice_metadata_brokers",
            "Brokers in the metadata, by state.",
            Gauge,
            m.brokers
                .iter()
                .map(|(state, n)| (vec![("state", state.to_string())], Value::Gauge(*n as i64))),
        )?;
        family(
            &mut e,
            "sluice_scrape_shards_missing",
            "Shards that did not answer this scrape in time (their series are absent).",
            Gauge,
            single(scrape.shards_missing as i64),
        )?;
        Ok(())
    }
}

/// The sum over shards of a per-shard counter in an exposition this module wrote
/// (`name{shard="…"} value` lines; `name` with its `_total`): what a benchmark or a test reads
/// from `/metrics`.
pub fn counter_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::snapshot::PartitionSnapshot;
    use crate::server::RaftStatus;

    #[test]
    fn every_family_is_written_once_with_every_shards_samples() {
        let mut a = ShardSnapshot::empty(0);
        a.requests = vec![(
            "Produce",
            3,
            HistogramSnapshot::empty(crate::metrics::histogram::LATENCY_BOUNDS_SECONDS),
        )];
        a.partitions.push(PartitionSnapshot {
            topic: "t".into(),
            partition: 0,
            leader: true,
            records_in: 7,
            bytes_in: 70,
            bytes_out: 0,
            replica_bytes_out: 0,
            log_start: 0,
            log_end: 7,
            high_watermark: 7,
            size_bytes: 70,
            replicas: 3,
            in_sync: 2,
            min_insync: 2,
        });
        let b = ShardSnapshot::empty(1);
        let text = Scrape {
            shards: vec![a, b],
            shards_missing: 0,
            metadata: MetadataSnapshot {
                node_id: 1,
                raft: RaftStatus::default(),
                version: 5,
                brokers: vec![("alive", 1)],
                offline_partitions: 0,
            },
        }
        .encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# TYPE sluice_requests counter").count(), 1);
        assert!(text.contains("sluice_requests_total{shard=\"0\",api=\"Produce\"} 3"));
        assert!(text.contains("sluice_partition_records_in_total{topic=\"t\",partition=\"0\"} 7"));
        assert!(
            text.contains("sluice_under_replicated_partitions 1\n"),
            "{text}"
        );
        assert!(text.contains("sluice_metadata_version 5\n"));
        assert!(text.contains("sluice_log_flushes_total{shard=\"1\"} 0"));
    }

    #[test]
    fn group_series_show_lag_only_where_the_high_watermark_is_known_here() {
        let mut a = ShardSnapshot::empty(0);
        a.partitions.push(PartitionSnapshot {
            topic: "t".into(),
            partition: 0,
            leader: true,
            records_in: 0,
            bytes_in: 0,
            bytes_out: 0,
            replica_bytes_out: 0,
            log_start: 0,
            log_end: 12,
            high_watermark: 10,
            size_bytes: 0,
            replicas: 1,
            in_sync: 1,
            min_insync: 1,
        });
        let mut b = ShardSnapshot::empty(1);
        b.groups.push(GroupMetrics {
            group: "g".into(),
            members: 2,
            group_epoch: 5,
            offsets: vec![("t".into(), 0, 4), ("t".into(), 1, 3)],
        });
        b.group_offsets_omitted = 7;
        let text = Scrape {
            shards: vec![a, b],
            shards_missing: 0,
            metadata: MetadataSnapshot {
                node_id: 1,
                raft: RaftStatus::default(),
                version: 1,
                brokers: Vec::new(),
                offline_partitions: 0,
            },
        }
        .encode();
        assert!(
            text.contains("sluice_group_members{group=\"g\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_group_rebalances_total{group=\"g\"} 5\n"),
            "{text}"
        );
        for (partition, offset) in [(0, 4), (1, 3)] {
            let series = format!(
                "sluice_group_committed_offset{{group=\"g\",topic=\"t\",partition=\"{partition}\"}} {offset}\n"
            );
            assert!(text.contains(&series), "{series} in {text}");
        }
        // Partition 0's high watermark (10, not its log end) is known on another shard of
        // this broker; partition 1 is led elsewhere.
        assert!(
            text.contains("sluice_group_lag{group=\"g\",topic=\"t\",partition=\"0\"} 6\n"),
            "{text}"
        );
        assert!(
            !text.contains("partition=\"1\"} 3\nsluice_group_lag"),
            "{text}"
        );
        assert_eq!(text.matches("sluice_group_lag{").count(), 1, "{text}");
        assert!(
            text.contains("sluice_group_offsets_omitted{shard=\"1\"} 7\n"),
            "{text}"
        );
    }

    /// Every `sluice_…` metric the operations guide and the Grafana dashboard name exists.
    #[test]
    fn the_docs_and_the_dashboard_name_only_metrics_that_exist() {
        let text = Scrape {
            shards: vec![ShardSnapshot::empty(0)],
            shards_missing: 0,
            metadata: MetadataSnapshot {
                node_id: 1,
                raft: RaftStatus::default(),
                version: 0,
                brokers: Vec::new(),
                offline_partitions: 0,
            },
        }
        .encode();
        let mut names = std::collections::HashSet::new();
        for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let (name, kind) = line.split_once(' ').unwrap();
            names.insert(name.to_string());
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["bucket", "sum", "count"] {
                        names.insert(format!("{name}_{suffix}"));
                    }
                }
                _ => {}
            }
        }
        let crates = [
            "sluice_broker",
            "sluice_client",
            "sluice_protocol",
            "sluice_bench",
        ];
        for (doc, body) in [
            (
                "docs/operations.md",
                include_str!("../../../docs/operations.md"),
            ),
            (
                "docs/grafana/sluice.json",
                include_str!("../../../docs/grafana/sluice.json"),
            ),
        ] {
            let mut rest = body;
            let mut checked = 0;
            while let Some(at) = rest.find("sluice_") {
                let token: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                rest = &rest[at + token.len()..];
                if crates.contains(&token.as_str()) {
                    continue;
                }
                assert!(
                    names.contains(&token),
                    "{doc} names {token}, which is not exposed"
                );
                checked += 1;
            }
            assert!(checked > 10, "{doc}: {checked} names");
        }
    }
}
