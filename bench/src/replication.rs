//! Replication scenarios on an embedded cluster of broker processes (one shard each, on this
//! machine): how long a partition acknowledges no `acks=all` record after its leader is killed
//! (`failover`), and how fast a replica added to a full partition catches up (`catchup`).
//!
//! The machine is shared and a cluster of three shares its two cores with the benchmark, so
//! each result also records the 1-minute load average before and after the run.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_client::{Acks, Admin, ClientConfig, Producer, ProducerConfig, ProducerRecord};

use crate::network::Broker;

const FAILOVER_TOPIC: &str = "bench-failover";
const CATCHUP_TOPIC: &str = "bench-catchup";
/// Longest any wait of these scenarios lasts before the run is called failed.
const WAIT_MAX: Duration = Duration::from_secs(120);
/// Steady `acks=all` traffic before the leader is killed.
const STEADY_BEFORE_KILL: Duration = Duration::from_secs(2);
/// Interval between records of the failover producer (its pace sets the figure's resolution).
const FAILOVER_SEND_INTERVAL: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Default, Serialize)]
pub struct FailoverParams {
    pub runs: u32,
    /// The brokers' lease (`--lease-ms`): a broker silent this long is marked dead.
    pub lease_ms: u64,
    /// The Raft election timeout (`--election-timeout-ms`).
    pub election_timeout_ms: u64,
    /// Whether `lease_ms` and `election_timeout_ms` are the broker's defaults.
    pub defaults: bool,
    pub record_bytes: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FailoverResult {
    /// Per run: ms from the SIGKILL of the leader to the first `acks=all` acknowledgement of a
    /// record sent after it (so acknowledged by the new leader).
    pub unavailable_ms: Vec<f64>,
    pub unavailable_ms_min: f64,
    pub unavailable_ms_median: f64,
    pub unavailable_ms_max: f64,
    pub load_avg_1m_start: f64,
    pub load_avg_1m_end: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CatchupParams {
    /// Data in the partition before the replica is added.
    pub fill_mib: u64,
    pub record_bytes: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CatchupResult {
    /// Bytes of the leader's segment files when the replica was added.
    pub partition_bytes: u64,
    pub fill_mb_s: f64,
    /// From the reassignment request to the new replica in the in-sync set.
    pub catch_up_s: f64,
    pub catch_up_mb_s: f64,
    pub load_avg_1m_start: f64,
    pub load_avg_1m_end: f64,
}

/// The 1-minute load average, from /proc/loadavg (0 where unreadable).
pub fn load_avg_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// An embedded cluster of `size` members (node ids 1..=size), each with `extra` flags.
struct Cluster {
    brokers: Vec<Broker>,
}

impl Cluster {
    fn start(dir: &Path, size: u32, extra: &[String]) -> Result<Cluster, String> {
        let metadata: Vec<String> = (0..size)
            .map(|_| crate::network::free_address())
            .collect::<Result<_, _>>()?;
        let peers = metadata
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut flags = vec!["--peers".to_string(), peers];
        flags.extend_from_slice(extra);
        let brokers = (0..size as usize)
            .map(|i| {
                Broker::start_member(
                    &dir.join(format!("broker-{}", i + 1)),
                    "throughput",
                    i as u64 + 1,
                    &metadata[i],
                    &flags,
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Cluster { brokers })
    }

    fn client(&self) -> ClientConfig {
        ClientConfig::new(self.brokers.iter().map(|b| b.listen.clone()))
            .request_timeout(Duration::from_secs(10))
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(100))
    }

    /// Creates `topic` (retrying while the cluster elects its controller and registers every
    /// member) and waits until its partition 0 has `in_sync` in-sync replicas; returns the
    /// partition's leader.
    async fn topic(&self, topic: &str, rf: u32, in_sync: usize) -> Result<u64, String> {
        let admin = Admin::new(self.client()).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            match admin.create_topic(topic, 1, rf).await {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing_free_pause(&e).await;
                }
                Err(e) => return Err(format!("create {topic}: {e}")),
            }
        }
        self.wait(&admin, topic, |p| {
            p.in_sync.len() >= in_sync && p.leader.is_some()
        })
        .await
        .map(|p| p.leader.unwrap_or_default())
    }

    async fn wait(
        &self,
        admin: &Admin,
        topic: &str,
        done: impl Fn(&sluice_client::PartitionState) -> bool,
    ) -> Result<sluice_client::PartitionState, String> {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            if let Ok(partitions) = admin.partitions(topic).await {
                if let Some(p) = partitions.first().filter(|p| done(p)) {
                    return Ok(p.clone());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("{topic}: timed out waiting for the cluster"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn tracing_free_pause(_error: &sluice_client::Error) {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// One failover run: a three-broker cluster, a replication-factor-3 partition under paced
/// `acks=all` load; its leader gets SIGKILL; the time until the first record sent after the
/// kill is acknowledged.
fn failover_once(dir: &Path, params: &FailoverParams, extra: &[String]) -> Result<f64, String> {
    let mut cluster = Cluster::start(dir, 3, extra)?;
    let runtime = runtime()?;
    let leader = runtime.block_on(cluster.topic(FAILOVER_TOPIC, 3, 3))?;
    let config = ProducerConfig::new(cluster.client())
        .acks(Acks::All)
        .linger(Duration::from_millis(1))
        .delivery_timeout(WAIT_MAX);
    // (sent, acknowledged) of every acknowledged record.
    let acks: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let value = vec![b'x'; params.record_bytes];
    let producing = {
        let acks = Arc::clone(&acks);
        let stop = Arc::clone(&stop);
        runtime.spawn(async move {
            let producer = Producer::new(config).await.map_err(|e| e.to_string())?;
            let mut next = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = Instant::now();
                let record = ProducerRecord::new(FAILOVER_TOPIC)
                    .partition(0)
                    .value(value.clone());
                let delivery = producer.send(record).await.map_err(|e| e.to_string())?;
                let acks = Arc::clone(&acks);
                tokio::spawn(async move {
                    if delivery.await.is_ok() {
                        acks.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((sent, Instant::now()));
                    }
                });
                next += FAILOVER_SEND_INTERVAL;
                tokio::time::sleep_until(next.into()).await;
            }
            producer.close().await.map_err(|e| e.to_string())
        })
    };
    std::thread::sleep(STEADY_BEFORE_KILL);
    let steady = acks.lock().unwrap_or_else(|p| p.into_inner()).len();
    if steady == 0 {
        return Err("no acks=all acknowledgement before the kill".into());
    }
    let killed_at = Instant::now();
    cluster.brokers[leader as usize - 1].kill();
    let deadline = killed_at + WAIT_MAX;
    let unavailable = loop {
        let first = acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(sent, _)| *sent >= killed_at)
            .map(|(_, acked)| *acked)
            .min();
        if let Some(acked) = first {
            break acked.duration_since(killed_at);
        }
        if Instant::now() >= deadline {
            return Err("no acknowledgement after the kill".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    runtime.block_on(producing).map_err(|e| e.to_string())??;
    Ok(unavailable.as_secs_f64() * 1000.0)
}

pub fn run_failover(
    params: &FailoverParams,
    dir: &Path,
    extra: &[String],
) -> Result<FailoverResult, String> {
    let load_avg_1m_start = load_avg_1m();
    let mut unavailable_ms = Vec::new();
    for run in 0..params.runs {
        let ms = failover_once(&dir.join(format!("failover-{run}")), params, extra)?;
        eprintln!("failover run {}: {ms:.0} ms", run + 1);
        unavailable_ms.push(ms);
    }
    let mut sorted = unavailable_ms.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(FailoverResult {
        unavailable_ms_min: sorted.first().copied().unwrap_or_default(),
        unavailable_ms_median: sorted.get(sorted.len() / 2).copied().unwrap_or_default(),
        unavailable_ms_max: sorted.last().copied().unwrap_or_default(),
        unavailable_ms,
        load_avg_1m_start,
        load_avg_1m_end: load_avg_1m(),
    })
}

/// Bytes of the `.log` segment files under a broker's data directory for `topic`.
fn segment_bytes(data_dir: &Path, topic: &str) -> u64 {
    let Ok(dirs) = std::fs::read_dir(data_dir.join("topics")) else {
        return 0;
    };
    dirs.flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with(topic))
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .filter(|f| f.file_name().to_string_lossy().ends_with(".log"))
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Two brokers, a replication-factor-1 partition filled with `fill_mib`; then a replica on the
/// other broker is added (a reassignment) and timed until it is in sync.
pub fn run_catchup(params: &CatchupParams, dir: &Path) -> Result<CatchupResult, String> {
    let load_avg_1m_start = load_avg_1m();
    let dirs: Vec<PathBuf> = (1..=2).map(|i| dir.join(format!("broker-{i}"))).collect();
    let cluster = Cluster::start(dir, 2, &[])?;
    let runtime = runtime()?;
    let leader = runtime.block_on(cluster.topic(CATCHUP_TOPIC, 1, 1))?;
    let other = if leader == 1 { 2 } else { 1 };
    let fill_bytes = params.fill_mib << 20;
    let value = vec![b'c'; params.record_bytes];
    let config = ProducerConfig::new(cluster.client())
        .acks(Acks::Leader)
        .linger(Duration::from_millis(5))
        .delivery_timeout(WAIT_MAX);
    let filled = Instant::now();
    runtime.block_on(async {
        let producer = Producer::new(config).await.map_err(|e| e.to_string())?;
        let mut sent = 0u64;
        let mut deliveries = std::collections::VecDeque::new();
        while sent < fill_bytes {
            let record = ProducerRecord::new(CATCHUP_TOPIC)
                .partition(0)
                .value(value.clone());
            deliveries.push_back(producer.send(record).await.map_err(|e| e.to_string())?);
            sent += value.len() as u64;
            while deliveries.len() > 100_000 {
                if let Some(d) = deliveries.pop_front() {
                    d.await.map_err(|e| e.to_string())?;
                }
            }
        }
        for d in deliveries {
            d.await.map_err(|e| e.to_string())?;
        }
        producer.close().await.map_err(|e| e.to_string())
    })?;
    let fill_s = filled.elapsed().as_secs_f64();
    let partition_bytes = segment_bytes(&dirs[leader as usize - 1], CATCHUP_TOPIC);
    eprintln!(
        "catchup: {:.0} MiB in the partition on broker {leader}; adding a replica on broker {other} ...",
        partition_bytes as f64 / (1 << 20) as f64
    );
    let admin = Admin::new(cluster.client()).map_err(|e| e.to_string())?;
    let started = Instant::now();
    runtime
        .block_on(admin.reassign_partition(CATCHUP_TOPIC, 0, &[leader, other]))
        .map_err(|e| e.to_string())?;
    runtime.block_on(cluster.wait(&admin, CATCHUP_TOPIC, |p| p.in_sync.contains(&other)))?;
    let catch_up_s = started.elapsed().as_secs_f64();
    Ok(CatchupResult {
        partition_bytes,
        fill_mb_s: partition_bytes as f64 / 1e6 / fill_s,
        catch_up_s,
        catch_up_mb_s: partition_bytes as f64 / 1e6 / catch_up_s,
        load_avg_1m_start,
        load_avg_1m_end: load_avg_1m(),
    })
}
