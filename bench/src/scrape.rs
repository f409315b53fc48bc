//! The `scrape` scenario: what the metrics endpoint costs, and the broker's own view of produce
//! latency.
//!
//! An embedded broker holds a topic of many partitions (10,000 by default, the most a topic may
//! have), each with one record, so every partition has its series. The scenario times scrapes
//! of `/metrics` with the broker idle, then runs the same client producer load twice on a
//! separate small topic: once without scrapes and once with a scrape every `--interval`
//! seconds, timing those scrapes too. The two phases' throughputs show what scraping takes from
//! producers (noisy on a shared machine: compare within one run). From the broker's
//! `sluice_request_duration_seconds{api="Produce"}` histogram, read before and after the
//! measured load, it reports the broker's produce latency (frame in to acknowledgement out)
//! beside the client's send-to-acknowledgement, so the broker's share shows.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use sluice_client::{
    Acks, Admin, ClientConfig, Delivery, Producer, ProducerConfig, ProducerRecord, Seek,
    TopicPartition,
};

use crate::network::Broker;
use crate::storage::{new_histogram, Latency};

const SCRAPED_TOPIC: &str = "scraped";
const LOAD_TOPIC: &str = "load";
const LOAD_PARTITIONS: u32 = 4;
/// Deliveries awaited at most at once by the load's collector.
const DELIVERIES_IN_FLIGHT_MAX: usize = 50_000;

#[derive(Debug, Clone, Default, Serialize)]
pub struct ScrapeParams {
    pub partitions: u32,
    pub scrapes: u32,
    pub duration_s: f64,
    pub interval_s: f64,
    pub record_bytes: usize,
    pub mode: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ScrapeResult {
    pub series: u64,
    pub exposition_bytes: u64,
    pub scrape_idle: Latency,
    pub scrape_under_load: Latency,
    pub produce_records_per_second_unscraped: f64,
    pub produce_records_per_second_scraped: f64,
    pub client_produce_to_ack: Latency,
    pub broker_produce_p50_us: Option<f64>,
    pub broker_produce_p99_us: Option<f64>,
    pub broker_produce_requests: u64,
}

/// One `GET /metrics`: (duration, body).
pub(crate) fn scrape(address: &str) -> Result<(Duration, String), String> {
    let started = Instant::now();
    let mut stream =
        std::net::TcpStream::connect(address).map_err(|e| format!("{address}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("a metrics response without a head")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "metrics answered {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok((elapsed, body.to_string()))
}

/// The broker's produce latency buckets, summed over shards: (upper bound in seconds,
/// cumulative count), in bound order.
pub fn produce_buckets(body: &str) -> Vec<(f64, f64)> {
    let mut sums: Vec<(f64, f64)> = Vec::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("sluice_request_duration_seconds_bucket{") else {
            continue;
        };
        if !rest.contains("api=\"Produce\"") {
            continue;
        }
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(le) = labels
            .split("le=\"")
            .nth(1)
            .and_then(|l| l.split('"').next())
        else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        let Ok(count) = value.trim().parse::<f64>() else {
            continue;
        };
        match sums.iter_mut().find(|(b, _)| *b == bound) {
            Some((_, c)) => *c += count,
            None => sums.push((bound, count)),
        }
    }
    sums.sort_by(|a, b| a.0.total_cmp(&b.0));
    sums
}

/// The quantile `q` of the observations between two scrapes' buckets, as the upper bound of the
/// bucket holding it (what Prometheus's `histogram_quantile` would interpolate within), in µs;
/// `None` without observations or above the last finite bound.
pub fn quantile_us(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(0.0, |(_, c)| *c);
            (*bound, count - earlier)
        })
        .collect();
    let total = diff.last()?.1;
    if total <= 0.0 {
        return None;
    }
    diff.iter()
        .find(|(_, cumulative)| *cumulative >= q * total)
        .map(|(bound, _)| bound * 1e6)
        .filter(|us| us.is_finite())
}

fn series_count(body: &str) -> u64 {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count() as u64
}

/// Produces to the load topic for `duration`; returns records acknowledged per second.
async fn load(
    producer: &Producer,
    value: &bytes::Bytes,
    duration: Duration,
    acks: Arc<Mutex<Histogram<u64>>>,
) -> Result<f64, String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Delivery)>(DELIVERIES_IN_FLIGHT_MAX);
    let collector = tokio::spawn(async move {
        let mut acked = 0u64;
        while let Some((sent, delivery)) = rx.recv().await {
            if delivery.await.is_ok() {
                acked += 1;
                let us = sent.elapsed().as_micros().max(1) as u64;
                let _ = acks.lock().unwrap_or_else(|e| e.into_inner()).record(us);
            }
        }
        acked
    });
    let started = Instant::now();
    while started.elapsed() < duration {
        let record = ProducerRecord::new(LOAD_TOPIC).value(value.clone());
        let sent = Instant::now();
        let delivery = producer.send(record).await.map_err(|e| e.to_string())?;
        tx.send((sent, delivery)).await.map_err(|e| e.to_string())?;
    }
    producer.flush().await.map_err(|e| e.to_string())?;
    drop(tx);
    let acked = collector.await.map_err(|e| e.to_string())?;
    Ok(acked as f64 / started.elapsed().as_secs_f64())
}

fn latency(h: &Histogram<u64>) -> Latency {
    Latency::from_histogram(h)
}

pub fn run(params: &ScrapeParams, dir: &std::path::Path) -> Result<ScrapeResult, String> {
    let broker = Broker::start(dir, &params.mode, &[])?;
    let metrics = broker.metrics.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let config =
            ClientConfig::new([broker.listen.clone()]).request_timeout(Duration::from_secs(120));
        let admin = Admin::new(config.clone()).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        eprintln!("creating {} partitions ...", params.partitions);
        loop {
            match admin
                .create_topic(SCRAPED_TOPIC, params.partitions, 1)
                .await
            {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("create topic: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(format!("create topic {SCRAPED_TOPIC}: {e}")),
            }
        }
        // The metadata names the leaders before the shards have opened every log: wait until
        // each partition answers (opening 10,000 logs takes a while on a loaded machine).
        let deadline = Instant::now() + Duration::from_secs(600);
        for p in 0..params.partitions {
            let tp = TopicPartition::new(SCRAPED_TOPIC, p);
            while let Err(e) = admin.offset(&tp, Seek::Latest).await {
                if Instant::now() > deadline {
                    return Err(format!("{SCRAPED_TOPIC}/{p} not served: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        eprintln!("every partition is served");
        admin
            .create_topic(LOAD_TOPIC, LOAD_PARTITIONS, 1)
            .await
            .map_err(|e| format!("create topic {LOAD_TOPIC}: {e}"))?;
        let producer = Producer::new(ProducerConfig::new(config.clone()).acks(Acks::Leader))
            .await
            .map_err(|e| e.to_string())?;
        // One record in every partition, so each has its log and series.
        let mut deliveries = Vec::with_capacity(params.partitions as usize);
        for p in 0..params.partitions {
            let record = ProducerRecord::new(SCRAPED_TOPIC).partition(p).value("x");
            deliveries.push(producer.send(record).await.map_err(|e| e.to_string())?);
        }
        for d in deliveries {
            d.await.map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    })?;

    // Idle scrapes.
    let mut idle = new_histogram()?;
    let (mut series, mut exposition_bytes) = (0, 0);
    for i in 0..params.scrapes {
        let (took, body) = scrape(&metrics)?;
        idle.record(took.as_micros().max(1) as u64)
            .map_err(|e| e.to_string())?;
        series = series_count(&body);
        exposition_bytes = body.len() as u64;
        eprintln!(
            "idle scrape {}/{}: {:.1} ms, {series} series, {:.1} MiB",
            i + 1,
            params.scrapes,
            took.as_secs_f64() * 1e3,
            exposition_bytes as f64 / (1 << 20) as f64
        );
    }

    // Load without and with scrapes.
    let value = bytes::Bytes::from(vec![b'v'; params.record_bytes]);
    let duration = Duration::from_secs_f64(params.duration_s);
    let acks = Arc::new(Mutex::new(new_histogram()?));
    let under_load = Arc::new(Mutex::new(new_histogram()?));
    let (unscraped, scraped, before, after) = runtime.block_on(async {
        let producer = Producer::new(
            ProducerConfig::new(ClientConfig::new([broker.listen.clone()])).acks(Acks::Leader),
        )
        .await
        .map_err(|e| e.to_string())?;
        // Warm up the connections and the load topic's logs.
        load(
            &producer,
            &value,
            Duration::from_secs(1),
            Arc::new(Mutex::new(new_histogram()?)),
        )
        .await?;
        let before = produce_buckets(
            &tokio::task::spawn_blocking({
                let metrics = metrics.clone();
                move || scrape(&metrics)
            })
            .await
            .map_err(|e| e.to_string())??
            .1,
        );
        eprintln!("load without scrapes, {:.0} s ...", params.duration_s);
        let unscraped = load(&producer, &value, duration, Arc::clone(&acks)).await?;
        let after = produce_buckets(
            &tokio::task::spawn_blocking({
                let metrics = metrics.clone();
                move || scrape(&metrics)
            })
            .await
            .map_err(|e| e.to_string())??
            .1,
        );
        eprintln!(
            "load with a scrape every {:.1} s, {:.0} s ...",
            params.interval_s, params.duration_s
        );
        let stop = Arc::new(AtomicBool::new(false));
        let scraper = std::thread::spawn({
            let (stop, metrics, under_load) =
                (Arc::clone(&stop), metrics.clone(), Arc::clone(&under_load));
            let interval = Duration::from_secs_f64(params.interval_s);
            move || -> Result<(), String> {
                while !stop.load(Ordering::Acquire) {
                    let started = Instant::now();
                    let (took, _) = scrape(&metrics)?;
                    under_load
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(took.as_micros().max(1) as u64)
                        .map_err(|e| e.to_string())?;
                    std::thread::sleep(interval.saturating_sub(started.elapsed()));
                }
                Ok(())
            }
        });
        let scraped = load(
            &producer,
            &value,
            duration,
            Arc::new(Mutex::new(new_histogram()?)),
        )
        .await?;
        stop.store(true, Ordering::Release);
        scraper
            .join()
            .map_err(|_| "the scraper thread panicked".to_string())??;
        producer.close().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((unscraped, scraped, before, after))
    })?;
    let acks = acks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let under_load = under_load.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let requests = after.last().map_or(0.0, |a| a.1) - before.last().map_or(0.0, |b| b.1);
    Ok(ScrapeResult {
        series,
        exposition_bytes,
        scrape_idle: latency(&idle),
        scrape_under_load: latency(&under_load),
        produce_records_per_second_unscraped: unscraped,
        produce_records_per_second_scraped: scraped,
        client_produce_to_ack: latency(&acks),
        broker_produce_p50_us: quantile_us(&before, &after, 0.5),
        broker_produce_p99_us: quantile_us(&before, &after, 0.99),
        broker_produce_requests: requests.max(0.0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_produce_histogram_is_read_across_shards_and_differenced() {
        let before = "sluice_request_duration_seconds_bucket{shard=\"0\",api=\"Produce\",le=\"0.001\"} 1\n\
                      sluice_request_duration_seconds_bucket{shard=\"0\",api=\"Produce\",le=\"+Inf\"} 2\n";
        let after = "sluice_request_duration_seconds_bucket{shard=\"0\",api=\"Produce\",le=\"0.001\"} 1\n\
                     sluice_request_duration_seconds_bucket{shard=\"0\",api=\"Produce\",le=\"0.01\"} 91\n\
                     sluice_request_duration_seconds_bucket{shard=\"0\",api=\"Produce\",le=\"+Inf\"} 102\n\
                     sluice_request_duration_seconds_bucket{shard=\"1\",api=\"Produce\",le=\"0.01\"} 10\n\
                     sluice_request_duration_seconds_bucket{shard=\"1\",api=\"Produce\",le=\"+Inf\"} 10\n\
                     sluice_request_duration_seconds_bucket{shard=\"1\",api=\"Fetch\",le=\"+Inf\"} 99\n";
        let (b, a) = (produce_buckets(before), produce_buckets(after));
        assert_eq!(a, vec![(0.001, 1.0), (0.01, 101.0), (f64::INFINITY, 112.0)]);
        // 110 new observations: 100 at or below 10 ms.
        assert_eq!(quantile_us(&b, &a, 0.5), Some(10_000.0));
        assert_eq!(
            quantile_us(&b, &a, 0.99),
            None,
            "above the last bound: unknown"
        );
        assert_eq!(quantile_us(&a, &a, 0.5), None);
    }
}
