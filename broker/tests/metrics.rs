//! The Prometheus endpoint of a real `sluice-broker` process: `GET /metrics` parsed by a real
//! parser (the `prometheus-parse` crate, plus a line-by-line check it is lenient about), series
//! unique, counters monotonic across scrapes under load, and the per-partition counters equal
//! to what the test produced and consumed.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use sluice_client::{
    Admin, ClientConfig, Consumer, ConsumerConfig, OffsetReset, Producer, ProducerConfig,
    ProducerRecord, Seek, TopicPartition,
};

use common::{http_get as get, BrokerProcess as Broker};

/// A sample's identity: its name and sorted labels.
type Series = (String, BTreeMap<String, String>);

/// Parses an exposition with `prometheus-parse` and checks what that parser lets pass: every
/// line is a comment or a sample it understood, the exposition ends with `# EOF`, and no
/// series appears twice. Returns every sample as a flat (series, value), histogram buckets,
/// sums and counts included.
fn parse(body: &str) -> HashMap<Series, f64> {
    assert!(body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    let lines: Vec<&str> = body.lines().collect();
    let sample_lines: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    let scrape = prometheus_parse::Scrape::parse(lines.iter().map(|l| Ok(l.to_string())))
        .expect("prometheus-parse reads the exposition");
    // Histograms fold their bucket lines into one sample; count lines the parser accepted.
    let mut understood = 0usize;
    for sample in &scrape.samples {
        understood += match &sample.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.len(),
            _ => 1,
        };
    }
    assert_eq!(
        understood,
        sample_lines.len(),
        "every sample line parses (a line the parser skipped is malformed)"
    );
    // Unique series, from the raw lines: name{labels} before the value.
    let mut seen = HashSet::new();
    let mut values = HashMap::new();
    for line in &sample_lines {
        let (series, value) = line.rsplit_once(' ').expect("name value");
        assert!(seen.insert(series.to_string()), "series twice: {series}");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels: BTreeMap<String, String> = labels
            .split("\",")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect("label=value");
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        let value: f64 = value.parse().expect("a number");
        values.insert((name.to_string(), labels), value);
    }
    // Names follow the conventions: the crate's prefix, counters end in _total.
    for family in body.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = family.split_once(' ').unwrap();
        assert!(name.starts_with("sluice_"), "{name}");
        assert!(!name.ends_with("_total"), "{name}: the encoder adds _total");
        assert!(["counter", "gauge", "histogram"].contains(&kind), "{kind}");
    }
    values
}

fn partition_value(values: &HashMap<Series, f64>, name: &str, topic: &str, p: u32) -> f64 {
    let labels: BTreeMap<String, String> = [
        ("topic".to_string(), topic.to_string()),
        ("partition".to_string(), p.to_string()),
    ]
    .into();
    *values
        .get(&(name.to_string(), labels))
        .unwrap_or_else(|| panic!("{name} for {topic}/{p}"))
}

fn config(broker: &Broker) -> ClientConfig {
    ClientConfig::new([broker.listen.clone()])
        .request_timeout(Duration::from_secs(10))
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

async fn create_topic(broker: &Broker, name: &str, partitions: u32) {
    let admin = Admin::new(config(broker)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = admin.create_topic(name, partitions, 1).await {
        assert!(Instant::now() < deadline, "create topic {name}: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Scrapes (off the runtime's threads) until `done` accepts a scrape; the last one.
async fn scrape_until(
    address: &str,
    what: &str,
    mut done: impl FnMut(&HashMap<Series, f64>) -> bool,
) -> HashMap<Series, f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scrape = tokio::task::spawn_blocking({
            let address = address.to_string();
            move || parse(&get(&address, "/metrics").1)
        })
        .await
        .unwrap();
        if done(&scrape) {
            return scrape;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// A group's series after it consumed and committed: members, rebalances (its epoch), and per
/// partition the committed offset and the lag behind the high watermark, which grows when
/// more is produced and drops to nothing once consumed; after `close`, no members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_series_follow_a_consumer_group_that_consumes_and_commits() {
    let broker = Broker::start("metrics-groups", 2, &[]);
    let topic = "grouped";
    create_topic(&broker, topic, 2).await;
    let producer = Producer::new(ProducerConfig::new(config(&broker)))
        .await
        .unwrap();
    let produce = |counts: [u64; 2]| {
        let producer = producer.clone();
        async move {
            let mut deliveries = Vec::new();
            for (p, count) in counts.iter().enumerate() {
                for i in 0..*count {
                    let record = ProducerRecord::new(topic)
                        .partition(p as u32)
                        .value(format!("v{p}-{i}"));
                    deliveries.push(producer.send(record).await.unwrap());
                }
            }
            for d in deliveries {
                d.await.unwrap();
            }
        }
    };
    produce([30, 50]).await;

    let mut consumer = Consumer::new(
        ConsumerConfig::new(config(&broker))
            .auto_offset_reset(OffsetReset::Earliest)
            .auto_commit(false),
    )
    .unwrap();
    consumer.subscribe("billing", [topic]).unwrap();
    let mut read = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while read < 80 {
        assert!(Instant::now() < deadline, "read {read} of 80");
        read += consumer
            .poll(Duration::from_millis(200))
            .await
            .unwrap()
            .len() as u64;
    }
    consumer.commit().await.unwrap();

    let offset = |p: &str| {
        series(
            "sluice_group_committed_offset",
            &[("group", "billing"), ("topic", topic), ("partition", p)],
        )
    };
    let lag = |p: &str| {
        series(
            "sluice_group_lag",
            &[("group", "billing"), ("topic", topic), ("partition", p)],
        )
    };
    let members = series("sluice_group_members", &[("group", "billing")]);
    let rebalances = series("sluice_group_rebalances_total", &[("group", "billing")]);
    let committed = scrape_until(&broker.metrics, "the commit in the metrics", |s| {
        s.get(&offset("0")) == Some(&30.0) && s.get(&offset("1")) == Some(&50.0)
    })
    .await;
    assert_eq!(committed.get(&members), Some(&1.0));
    let epoch = *committed.get(&rebalances).expect("rebalances");
    assert!(epoch >= 1.0, "the member's join bumped the epoch: {epoch}");
    assert_eq!(committed.get(&lag("0")), Some(&0.0));
    assert_eq!(committed.get(&lag("1")), Some(&0.0));

    // More records: the lag is the high watermark minus the committed offset.
    produce([5, 9]).await;
    let behind = scrape_until(&broker.metrics, "the lag to grow", |s| {
        s.get(&lag("0")) == Some(&5.0) && s.get(&lag("1")) == Some(&9.0)
    })
    .await;
    assert_eq!(behind.get(&offset("0")), Some(&30.0));

    // Leaving commits nothing new (no auto-commit) and empties the group; the epoch counts
    // the departure and never goes back.
    consumer.close().await.unwrap();
    let left = scrape_until(&broker.metrics, "the member to leave", |s| {
        s.get(&members) == Some(&0.0)
    })
    .await;
    let after = *left.get(&rebalances).expect("rebalances after leaving");
    assert!(after > epoch, "leaving is a rebalance: {epoch} -> {after}");
    assert_eq!(left.get(&lag("1")), Some(&9.0));
    producer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_count_what_was_produced_and_consumed_and_only_grow() {
    let broker = Broker::start("metrics", 2, &[]);
    let topic = "metered";
    let partitions = 3u32;
    create_topic(&broker, topic, partitions).await;

    // Produce a known number of records per partition.
    let producer = Producer::new(ProducerConfig::new(config(&broker)))
        .await
        .unwrap();
    let per_partition = [40u64, 75, 120];
    let mut deliveries = Vec::new();
    for (p, count) in per_partition.iter().enumerate() {
        for i in 0..*count {
            let record = ProducerRecord::new(topic)
                .partition(p as u32)
                .key(format!("k{i}"))
                .value(format!("value-{p}-{i}"));
            deliveries.push(producer.send(record).await.unwrap());
        }
    }
    for d in deliveries {
        d.await.unwrap();
    }

    let (status, body) = get(&broker.metrics, "/metrics");
    assert!(status.contains("200"), "{status}");
    let before_consume = parse(&body);
    for p in 0..partitions {
        let records_in = partition_value(
            &before_consume,
            "sluice_partition_records_in_total",
            topic,
            p,
        );
        assert_eq!(
            records_in, per_partition[p as usize] as f64,
            "records in of {p}"
        );
        let end = partition_value(&before_consume, "sluice_partition_log_end_offset", topic, p);
        assert_eq!(end, per_partition[p as usize] as f64, "log end of {p}");
        let hw = partition_value(&before_consume, "sluice_partition_high_watermark", topic, p);
        assert_eq!(hw, end, "high watermark of {p}");
        let bytes_in =
            partition_value(&before_consume, "sluice_partition_bytes_in_total", topic, p);
        let size = partition_value(&before_consume, "sluice_partition_size_bytes", topic, p);
        assert_eq!(
            size, bytes_in,
            "one replica: the log holds exactly what came in"
        );
        assert_eq!(
            partition_value(
                &before_consume,
                "sluice_partition_bytes_out_total",
                topic,
                p
            ),
            0.0
        );
    }

    // Consume everything once: bytes out equal bytes in.
    let mut consumer = Consumer::new(ConsumerConfig::new(config(&broker))).unwrap();
    let tps: Vec<TopicPartition> = (0..partitions)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    consumer.assign(tps.clone());
    for tp in &tps {
        consumer.seek(tp, Seek::Earliest).await.unwrap();
    }
    let total: u64 = per_partition.iter().sum();
    let mut read = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while read < total {
        assert!(Instant::now() < deadline, "read {read} of {total}");
        read += consumer
            .poll(Duration::from_millis(200))
            .await
            .unwrap()
            .len() as u64;
    }
    assert_eq!(read, total);
    let (_, body) = get(&broker.metrics, "/metrics");
    let after_consume = parse(&body);
    for p in 0..partitions {
        assert_eq!(
            partition_value(&after_consume, "sluice_partition_bytes_out_total", topic, p),
            partition_value(&after_consume, "sluice_partition_bytes_in_total", topic, p),
            "bytes out of {p}"
        );
    }
    let produce_requests: f64 = after_consume
        .iter()
        .filter(|((name, labels), _)| {
            name == "sluice_requests_total"
                && labels.get("api").map(String::as_str) == Some("Produce")
        })
        .map(|(_, v)| v)
        .sum();
    assert!(produce_requests >= 1.0, "produce requests are counted");

    // Under load, counters only grow between two scrapes.
    let load = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let record = ProducerRecord::new(topic).value(format!("load-{sent}"));
                match producer.send(record).await {
                    Ok(d) => drop(d),
                    Err(_) => return sent,
                }
                sent += 1;
                if sent % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let address = broker.metrics.clone();
    let first = tokio::task::spawn_blocking({
        let address = address.clone();
        move || parse(&get(&address, "/metrics").1)
    })
    .await
    .unwrap();
    // Wait until the load has moved a counter, then scrape again.
    let appends = |values: &HashMap<Series, f64>| -> f64 {
        values
            .iter()
            .filter(|((name, _), _)| name == "sluice_log_appends_total")
            .map(|(_, v)| v)
            .sum()
    };
    let second = loop {
        let scrape = tokio::task::spawn_blocking({
            let address = address.clone();
            move || parse(&get(&address, "/metrics").1)
        })
        .await
        .unwrap();
        if appends(&scrape) > appends(&first) {
            break scrape;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(30),
            "the load appends"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    producer.close().await.unwrap();
    let sent = load.await.unwrap();
    assert!(sent > 0);
    let monotonic = |name: &str| {
        name.ends_with("_total")
            || name.ends_with("_count")
            || name.ends_with("_bucket")
            || name.ends_with("_sum")
    };
    let mut checked = 0;
    for ((name, labels), v1) in &first {
        if !monotonic(name) {
            continue;
        }
        let v2 = second
            .get(&(name.clone(), labels.clone()))
            .unwrap_or_else(|| panic!("{name} {labels:?} disappeared"));
        assert!(v2 >= v1, "{name} {labels:?} went back: {v1} -> {v2}");
        checked += 1;
    }
    assert!(checked > 50, "only {checked} counters checked");

    // Anything but GET /metrics is refused, and the broker goes on serving.
    assert!(get(&broker.metrics, "/").0.contains("404"));
    let (status, body) = get(&broker.metrics, "/metrics");
    assert!(status.contains("200") && body.ends_with("# EOF\n"));
}

/// `--log-format json`: every line a JSON object; start, leadership and stop are one line each
/// with their ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_significant_events_with_their_ids() {
    let mut broker = Broker::start("json-logs", 1, &["--log", "info", "--log-format", "json"]);
    create_topic(&broker, "logged", 2).await;
    let events = |path: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let message = |e: &serde_json::Value| e["fields"]["message"].as_str().unwrap_or("").to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leading = events(&broker.log_path())
            .iter()
            .filter(|e| message(e) == "leading" && e["fields"]["topic"] == "logged")
            .count();
        if leading == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two leadership lines, saw {leading}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(broker.terminate().success());
    let events = events(&broker.log_path());
    let started = events
        .iter()
        .find(|e| message(e) == "broker started")
        .expect("a start line");
    assert_eq!(started["fields"]["node"], 1);
    assert_eq!(started["fields"]["listen"], broker.listen.as_str());
    assert!(events
        .iter()
        .any(|e| message(e) == "metadata controller changed" && e["fields"]["controller"] == 1));
    assert!(events
        .iter()
        .any(|e| message(e) == "broker stopped" && e["fields"]["node"] == 1));
    assert!(events
        .iter()
        .all(|e| e["level"].is_string() && e["timestamp"].is_string()));
}

/// DescribeLatency and the quantile gauges: every produce request and every flush of a shard is
/// in its exact distributions (as many as `/metrics` counts of each), and the quantiles are
/// ordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_latencies_count_every_produce_request_and_flush() {
    let broker = Broker::start("metrics-latency", 2, &[]);
    let topic = "timed";
    create_topic(&broker, topic, 2).await;
    let producer = Producer::new(ProducerConfig::new(config(&broker)).linger(Duration::ZERO))
        .await
        .unwrap();
    for i in 0..50u32 {
        let record = ProducerRecord::new(topic)
            .partition(i % 2)
            .value(format!("timed-{i}"));
        producer.send(record).await.unwrap().await.unwrap();
    }
    let admin = Admin::new(config(&broker)).unwrap();
    let cluster = admin.describe_cluster(Some(&[])).await.unwrap();
    let values = parse(&get(&broker.metrics, "/metrics").1);
    let mut produce_total = 0;
    for (shard, address) in cluster.brokers[0].shard_addresses.iter().enumerate() {
        let answer = admin.describe_latency(address).await.unwrap();
        assert_eq!(answer.shard as usize, shard);
        let shard_label = shard.to_string();
        let count = |buckets: &[sluice_client::LatencyBucket]| -> u64 {
            assert!(buckets.windows(2).all(|w| w[0].value_us < w[1].value_us));
            buckets.iter().map(|b| b.count).sum()
        };
        let produce = count(&answer.produce);
        let requests = values
            .get(&series(
                "sluice_requests_total",
                &[("shard", &shard_label), ("api", "Produce")],
            ))
            .copied()
            .unwrap_or(0.0);
        assert_eq!(produce as f64, requests, "shard {shard}: produce requests");
        produce_total += produce;
        let flushes = values[&series("sluice_log_flushes_total", &[("shard", &shard_label)])];
        assert_eq!(
            count(&answer.flush_device) as f64,
            flushes,
            "shard {shard}: flushes"
        );
        for of in ["produce", "flush_device"] {
            let q = |quantile: &str| {
                values[&series(
                    "sluice_latency_quantile_seconds",
                    &[("shard", &shard_label), ("of", of), ("quantile", quantile)],
                )]
            };
            assert!(q("0.5") <= q("0.99") && q("0.99") <= q("0.999") && q("0.999") <= q("1"));
        }
    }
    assert!(produce_total >= 50, "{produce_total} produce requests");
    producer.close().await.unwrap();
}
