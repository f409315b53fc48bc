//! The `metadata` scenario: how fast the Raft-replicated metadata is.
//!
//! Brokers' metadata nodes run in this process, each on its own thread with its own runtime and
//! data directory, talking Raft over loopback TCP exactly as separate processes do. Measured:
//! the time to create N topics of P partitions one request after another, the per-request commit
//! latency (p50/p99), and, with three brokers, the time from stopping the controller (its thread
//! and sockets vanish at once) to a new controller serving a topic creation.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_broker::metadata::{
    AdminClient, AdminReply, AdminRequest, MetadataConfig, MetadataNode,
};

use crate::network::free_address;
use crate::storage::{new_histogram, Latency};

#[derive(Debug, Clone, Default, Serialize)]
pub struct MetadataParams {
    pub brokers: u64,
    pub topics: u32,
    pub partitions: u32,
    pub election_timeout_ms: u64,
    pub snapshot_logs: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MetadataResult {
    pub create_seconds: f64,
    pub topics_per_second: f64,
    pub commit_latency: Latency,
    /// Kill of the controller to a topic created by the new one (three brokers only).
    pub failover_ms: Option<f64>,
    pub election_timeout_ms: u64,
}

struct RunningNode {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningNode {
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_node(config: MetadataConfig) -> Result<RunningNode, String> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let thread = std::thread::Builder::new()
        .name(format!("meta-{}", config.node_id))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                match MetadataNode::start(config).await {
                    Ok(_node) => {
                        let _ = ready_tx.send(Ok(()));
                        let _ = stop_rx.await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
            });
            // Dropping the runtime drops every task and socket at once, like a crash.
        })
        .map_err(|e| e.to_string())?;
    ready_rx.recv().map_err(|e| e.to_string())??;
    Ok(RunningNode {
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

fn controller_of(client: &AdminClient, address: &str) -> Option<u64> {
    match client.request_to_blocking(address, AdminRequest::Describe) {
        Ok(AdminReply::Cluster(view)) if view.state.brokers.len() as u64 >= 1 => view.controller,
        _ => None,
    }
}

/// Runs the scenario with data under `root` (removed afterwards).
pub fn run(params: &MetadataParams, root: &Path) -> Result<MetadataResult, String> {
    let _ = std::fs::remove_dir_all(root);
    let addresses: Vec<String> = (0..params.brokers)
        .map(|_| free_address())
        .collect::<Result<_, _>>()?;
    let peers: BTreeMap<u64, String> = if params.brokers > 1 {
        addresses
            .iter()
            .enumerate()
            .map(|(i, a)| (i as u64 + 1, a.clone()))
            .collect()
    } else {
        BTreeMap::new()
    };
    let mut nodes = Vec::new();
    for (i, address) in addresses.iter().enumerate() {
        let id = i as u64 + 1;
        let mut config = MetadataConfig::new(
            id,
            root.join(format!("broker-{id}")).join("metadata"),
            address.clone(),
        );
        config.peers = peers.clone();
        config.shards = 2;
        config.election_timeout_ms = params.election_timeout_ms;
        config.snapshot_logs = params.snapshot_logs;
        nodes.push(start_node(config)?);
    }
    let client = AdminClient::new(addresses.clone()).with_timeout(Duration::from_secs(30));
    // Wait until every broker registered, so replication factors and placement are stable.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(AdminReply::Cluster(view)) = client.request_blocking(AdminRequest::Describe) {
            if view.state.brokers.len() as u64 == params.brokers && view.controller.is_some() {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err("the cluster did not form within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut histogram = new_histogram()?;
    let started = Instant::now();
    runtime.block_on(async {
        for i in 0..params.topics {
            let t0 = Instant::now();
            client
                .request(AdminRequest::CreateTopic {
                    name: format!("bench-{i}"),
                    partitions: params.partitions,
                    replication_factor: params.brokers.min(3) as u32,
                    config: None,
                })
                .await
                .map_err(|e| e.to_string())?;
            let _ = histogram.record((t0.elapsed().as_micros() as u64).max(1));
            if i % 100 == 99 {
                eprint!("\rmetadata: {} / {} topics", i + 1, params.topics);
            }
        }
        eprintln!();
        Ok::<(), String>(())
    })?;
    let create_seconds = started.elapsed().as_secs_f64();

    let mut failover_ms = None;
    if params.brokers >= 3 {
        let leader = controller_of(&client, &addresses[0]).ok_or("no controller")?;
        let killed = Instant::now();
        nodes[leader as usize - 1].stop();
        let survivors: Vec<String> = addresses
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u64 + 1 != leader)
            .map(|(_, a)| a.clone())
            .collect();
        let survivors_client = AdminClient::new(survivors).with_timeout(Duration::from_secs(30));
        runtime.block_on(async {
            survivors_client
                .request(AdminRequest::CreateTopic {
                    name: "after-failover".into(),
                    partitions: params.partitions,
                    replication_factor: 1,
                    config: None,
                })
                .await
                .map_err(|e| e.to_string())
        })?;
        failover_ms = Some(killed.elapsed().as_secs_f64() * 1000.0);
    }
    drop(nodes);
    let _ = std::fs::remove_dir_all(root);
    Ok(MetadataResult {
        create_seconds,
        topics_per_second: f64::from(params.topics) / create_seconds,
        commit_latency: Latency::from_histogram(&histogram),
        failover_ms,
        election_timeout_ms: params.election_timeout_ms,
    })
}
