//! `sluice-broker`: starts one broker.
//!
//! Today a broker runs its metadata node: the Raft member that replicates cluster metadata, the
//! controller duties when it leads, and its own registration and heartbeats. The data-path
//! shards serving the native protocol arrive with the broker issue.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sluice_broker::metadata::{MetadataConfig, MetadataNode, NodeId};

#[derive(Debug, Parser)]
#[command(name = "sluice-broker", version, about = "The Sluice message broker")]
struct Args {
    /// This broker's id, unique in the cluster.
    #[arg(long, default_value_t = 1)]
    node_id: NodeId,
    /// The fixed voter set as `id=host:port` metadata addresses, comma-separated, this broker
    /// included (e.g. `1=127.0.0.1:9492,2=127.0.0.1:9592,3=127.0.0.1:9692`). Without it the
    /// broker forms a cluster of one.
    #[arg(long, value_delimiter = ',', value_parser = parse_peer, conflicts_with = "join")]
    peers: Vec<(NodeId, String)>,
    /// Join a running cluster through these brokers' metadata addresses (comma-separated): the
    /// controller adds this broker as a learner, and once it has caught up, as a voter.
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// Directory for all data: partitions and metadata.
    #[arg(long, default_value = "./sluice-data")]
    data_dir: PathBuf,
    /// Native-protocol address advertised to clients in the metadata.
    #[arg(long, default_value = "127.0.0.1:9490")]
    listen: String,
    /// Address of the metadata port (Raft traffic and admin requests). Defaults to this
    /// broker's entry in --peers, else 127.0.0.1:9492.
    #[arg(long)]
    metadata_listen: Option<String>,
    /// Shards (cores) this broker offers for partitions; default: the cores available.
    #[arg(long)]
    shards: Option<u32>,
    /// Lower bound of the Raft election timeout in milliseconds (the upper bound is twice it).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(20..=60_000))]
    election_timeout_ms: u64,
    /// A broker that has not heartbeated for this long is marked dead and loses leadership.
    #[arg(long, default_value_t = 6_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    lease_ms: u64,
    /// Take a metadata snapshot (and compact the Raft log) every this many entries.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    snapshot_logs: u64,
    /// Log filter (tracing syntax), e.g. `info` or `sluice_broker=debug`.
    #[arg(long, default_value = "warn")]
    log: String,
}

fn parse_peer(text: &str) -> Result<(NodeId, String), String> {
    let (id, address) = text
        .split_once('=')
        .ok_or_else(|| format!("peer {text:?} is not id=host:port"))?;
    let id: NodeId = id
        .trim()
        .parse()
        .map_err(|_| format!("peer id {id:?} is not a number"))?;
    let address = address.trim();
    if address
        .rsplit_once(':')
        .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(format!("peer address {address:?} is not host:port"));
    }
    Ok((id, address.to_string()))
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("sluice-broker: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log) {
        Ok(filter) => filter,
        Err(error) => return fail(format_args!("invalid --log filter: {error}")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let peers: BTreeMap<NodeId, String> = args.peers.iter().cloned().collect();
    if peers.len() != args.peers.len() {
        return fail("--peers lists an id twice");
    }
    if !peers.is_empty() && !peers.contains_key(&args.node_id) {
        return fail(format_args!(
            "--peers does not list --node-id {}",
            args.node_id
        ));
    }
    let metadata_listen = args
        .metadata_listen
        .clone()
        .or_else(|| peers.get(&args.node_id).cloned())
        .unwrap_or_else(|| "127.0.0.1:9492".to_string());
    let metadata_dir = args.data_dir.join("metadata");
    if let Err(error) = std::fs::create_dir_all(&metadata_dir) {
        return fail(format_args!(
            "data directory {}: {error}",
            args.data_dir.display()
        ));
    }
    let probe = metadata_dir.join(".write-test");
    if let Err(error) = std::fs::write(&probe, b"ok").and_then(|()| std::fs::remove_file(&probe)) {
        return fail(format_args!(
            "data directory {} is not writable: {error}",
            args.data_dir.display()
        ));
    }
    let shards = args
        .shards
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    if shards == 0 {
        return fail("--shards must be at least 1");
    }
    let config = MetadataConfig {
        node_id: args.node_id,
        dir: metadata_dir,
        listen: metadata_listen,
        peers,
        join: args.join.clone(),
        broker_address: args.listen.clone(),
        shards,
        election_timeout_ms: args.election_timeout_ms,
        lease_ms: args.lease_ms,
        snapshot_logs: args.snapshot_logs,
    };

    // The metadata node runs on this thread's current-thread runtime; data-path shards will run
    // on their own pinned threads.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(format_args!("cannot start the metadata runtime: {error}")),
    };
    runtime.block_on(async move {
        let node = match MetadataNode::start(config).await {
            Ok(node) => node,
            Err(error) => return fail(error),
        };
        tracing::info!(node = node.id(), "broker started");
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    return fail(format_args!("cannot install the SIGTERM handler: {error}"))
                }
            };
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        node.shutdown().await;
        ExitCode::SUCCESS
    })
}
