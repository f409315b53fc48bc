//! `sluice-broker`: starts one broker.
//!
//! Start-up order: the shards first (one pinned glommio executor per core; each binds the main
//! address and its own fixed port, see `Listeners`), then the metadata node on this thread's current-thread tokio
//! runtime, registering the broker with its shard addresses. The metadata thread forwards every
//! applied metadata version to the shards and serves their admin requests. SIGTERM or SIGINT:
//! a controlled shutdown first (the controller moves this broker's leaderships to other in-sync
//! replicas, bounded by `CONTROLLED_SHUTDOWN_WAIT`), then the shards stop accepting, finish in-flight requests, flush and close their logs; exit 0. A shard
//! whose storage fails stops the whole process (exit 1) rather than leaving the others serving.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;
use std::time::Duration;

use crate::groups::coordinator::GroupsConfig;
use crate::limits::{ADMIN_QUEUE_MAX, SHARD_PORT_OFFSET};
use crate::metadata::types::{FlushSetting, TopicConfig};
use crate::metadata::{AdminClient, ClusterState, MetadataConfig, MetadataNode, NodeId};
use crate::server::shard::Shards;
use crate::server::{AdminCall, MetadataLink, Mode, RaftStatus, ShardConfig};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "sluice-broker",
    version,
    about = "The Sluice message broker",
    long_about = "The Sluice message broker. Every flag can also be set in a TOML file given with \
                  --config (keys are the flag names, e.g. `data_dir = \"/var/lib/sluice\"`); \
                  flags on the command line win over the file.",
    args_override_self = true
)]
struct Args {
    /// TOML file with settings (keys are flag names); command-line flags win over it.
    #[arg(long)]
    config: Option<PathBuf>,
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
    /// Native-protocol address: every shard accepts connections here.
    #[arg(long, default_value = "127.0.0.1:9490")]
    listen: String,
    /// Each shard's own port, comma-separated, one per shard in shard order (shard-aware
    /// clients connect straight to the shard that owns a partition). Default: the --listen port
    /// plus 10 plus the shard index (9500, 9501, … for 127.0.0.1:9490). Fixed, so a restarted
    /// broker's shards are where the metadata says; a port in use stops the start-up.
    #[arg(long, value_delimiter = ',')]
    shard_ports: Vec<u16>,
    /// The address clients are told to use for this broker, `host` or `host:port`, when they
    /// cannot reach --listen as it is (NAT, containers, listening on 0.0.0.0), like Kafka's
    /// advertised.listeners. The host is advertised with every shard port too. Default: --listen.
    #[arg(long)]
    advertise: Option<String>,
    /// The shard ports clients are told to use, comma-separated, one per shard, when they differ
    /// from --shard-ports (a port mapping in front of the broker). Default: --shard-ports.
    #[arg(long, value_delimiter = ',')]
    advertise_shard_ports: Vec<u16>,
    /// Kafka-protocol address (Kafka clients bootstrap here; every shard accepts), or `none`
    /// for no Kafka listener. Each shard also listens on its own Kafka port and is a Kafka node
    /// of its own in the metadata Kafka clients get.
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka_listen: String,
    /// Each shard's own Kafka port, comma-separated, in shard order. Default: the
    /// --kafka-listen port plus 10 plus the shard index (9102, 9103, … for 9092). The host
    /// advertised is --advertise's (else --kafka-listen's).
    #[arg(long, value_delimiter = ',')]
    kafka_shard_ports: Vec<u16>,
    /// `throughput`: group commit over each topic's flush window, large buffers.
    /// `latency`: flush as soon as data arrives, small buffers.
    #[arg(long, value_enum, default_value = "throughput")]
    mode: Mode,
    /// Address of the metadata port (Raft traffic and admin requests). Defaults to this
    /// broker's entry in --peers, else 127.0.0.1:9492.
    #[arg(long)]
    metadata_listen: Option<String>,
    /// Shards (pinned executors, one per core) serving partitions; default: the cores available.
    #[arg(long)]
    shards: Option<u32>,
    /// Raft election timeout in milliseconds: a follower that has not heard from the controller
    /// for this long (randomized between 5/6 of it and all of it) starts an election.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(30..=60_000))]
    election_timeout_ms: u64,
    /// A broker that has not heartbeated for this long is marked dead and loses leadership.
    #[arg(long, default_value_t = 6_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    lease_ms: u64,
    /// Take a metadata snapshot (and compact the Raft log) every this many entries.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    snapshot_logs: u64,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`), or `none` to serve no
    /// metrics. Default: the --listen host and port + 1 (127.0.0.1:9491 for 127.0.0.1:9490), so
    /// brokers run side by side with their own --listen do not collide.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Log filter (tracing syntax), e.g. `info` or `sluice_broker=debug`. At `info` every
    /// significant event is one line with its ids: start and stop, controller and partition
    /// leadership changes, in-sync set changes, a log tail cut by recovery, watchdog recoveries.
    /// openraft's own info lines (elections, votes) are left out unless asked for.
    #[arg(long, default_value = "info,openraft=warn")]
    log: String,
    /// `text` for people, `json` (one object per line: timestamp, level, fields, target) for
    /// log pipelines.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Default segment size of new topics' partitions, in bytes.
    #[arg(long, default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1 << 20..=(4u64 << 30) - (2 << 20)))]
    segment_bytes: u64,
    /// Default age after which a segment is rolled, in ms.
    #[arg(long, default_value_t = 7 * 24 * 3600 * 1000, value_parser = clap::value_parser!(u64).range(1..))]
    segment_ms: u64,
    /// Default retention time of new topics in ms; -1 keeps data forever.
    #[arg(long, default_value_t = 7 * 24 * 3600 * 1000, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    retention_ms: i64,
    /// Default retention size per partition in bytes; -1 for no limit.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    retention_bytes: i64,
    /// Default flush policy: `always` (fsync before every ack, shared by concurrent appends),
    /// `interval` (group commit every --flush-interval-ms or --flush-bytes), `never`.
    #[arg(long, value_enum, default_value = "interval")]
    flush: FlushFlag,
    /// Group-commit window of the `interval` flush policy, in ms.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    flush_interval_ms: u64,
    /// Group-commit byte window of the `interval` flush policy.
    #[arg(long, default_value_t = 4 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
    flush_bytes: u64,
    /// Default largest batch (message set) a producer may send to a new topic, in bytes.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(64..=64 << 20))]
    message_bytes_max: u64,
    /// How often each shard applies retention and compaction to its logs, in ms (Kafka's
    /// `log.retention.check.interval.ms`).
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    log_retention_check_interval_ms: u64,
    /// Partitions of the consumer groups' offsets log (`__consumer_offsets`) when this broker
    /// creates it (on the first group request).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    offsets_partitions: u32,
    /// Segment size of the offsets log's partitions when this broker creates it, in bytes
    /// (small segments are compacted sooner).
    #[arg(long, default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1 << 20..=1 << 30))]
    offsets_segment_bytes: u64,
    /// Session timeout of a group member that asks for none, in ms.
    #[arg(long, default_value_t = 45_000, value_parser = clap::value_parser!(u64).range(500..=1_800_000))]
    group_session_timeout_ms: u64,
    /// How often group members heartbeat, in ms.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    group_heartbeat_interval_ms: u64,
    /// Offsets of a group with no members are deleted this long after its last commit, in ms.
    #[arg(long, default_value_t = 7 * 24 * 3600 * 1000, value_parser = clap::value_parser!(u64).range(1..))]
    offsets_retention_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FlushFlag {
    Always,
    Interval,
    Never,
}

impl Args {
    fn topic_defaults(&self) -> TopicConfig {
        TopicConfig {
            segment_bytes: self.segment_bytes,
            segment_age_ms: Some(self.segment_ms),
            retention_ms: u64::try_from(self.retention_ms).ok(),
            retention_bytes: u64::try_from(self.retention_bytes).ok(),
            flush: match self.flush {
                FlushFlag::Always => FlushSetting::Always,
                FlushFlag::Never => FlushSetting::Never,
                FlushFlag::Interval => FlushSetting::Interval {
                    interval_ms: self.flush_interval_ms,
                    bytes: self.flush_bytes,
                },
            },
            message_bytes_max: self.message_bytes_max,
            ..TopicConfig::default()
        }
    }
}

/// The command line with the settings of a `--config` file inserted before the flags, so the
/// flags (parsed later, overriding) win.
fn arguments_with_config(
    mut args: Vec<std::ffi::OsString>,
) -> Result<Vec<std::ffi::OsString>, String> {
    let mut path = None;
    for (i, arg) in args.iter().enumerate() {
        let text = arg.to_string_lossy();
        if let Some(value) = text.strip_prefix("--config=") {
            path = Some(PathBuf::from(value));
        } else if text == "--config" {
            path = args.get(i + 1).map(PathBuf::from);
        }
    }
    let Some(path) = path else { return Ok(args) };
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("config {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("config {}: {e}", path.display()))?;
    let mut settings = Vec::new();
    for (key, value) in table {
        if key == "config" {
            return Err(format!(
                "config {}: a config file cannot name another",
                path.display()
            ));
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Ok(other.to_string()),
                })
                .collect::<Result<Vec<_>, String>>()?
                .join(","),
            other => {
                return Err(format!(
                    "config {}: {key} has an unsupported value {other}",
                    path.display()
                ))
            }
        };
        settings.push(std::ffi::OsString::from(format!(
            "--{}={value}",
            key.replace('_', "-")
        )));
    }
    let program = args.remove(0);
    Ok(std::iter::once(program)
        .chain(settings)
        .chain(args)
        .collect())
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

/// Where the broker listens and what it tells clients, resolved from the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listeners {
    /// Each shard's own listening address.
    shards: Vec<SocketAddr>,
    /// The main address in the metadata.
    advertised: String,
    /// Each shard's address in the metadata.
    advertised_shards: Vec<String>,
    /// The Kafka listener, unless `--kafka-listen none`.
    kafka: Option<crate::kafka::KafkaListeners>,
}

/// Each shard's own port: `explicit` (one per shard) or `base` + `SHARD_PORT_OFFSET` + index;
/// never 0, never `base`, never twice. `flags` names the flags in errors.
fn shard_ports(
    base: u16,
    explicit: &[u16],
    shards: u32,
    flags: (&str, &str),
) -> Result<Vec<u16>, String> {
    let (base_flag, ports_flag) = flags;
    let ports: Vec<u16> = if explicit.is_empty() {
        (0..shards)
            .map(|i| {
                u16::try_from(u32::from(base) + u32::from(SHARD_PORT_OFFSET) + i).map_err(|_| {
                    format!(
                        "{base_flag} port {base} leaves no room for {shards} shard ports \
                         above it; give {ports_flag}"
                    )
                })
            })
            .collect::<Result<_, _>>()?
    } else if explicit.len() == shards as usize {
        explicit.to_vec()
    } else {
        return Err(format!(
            "{ports_flag} lists {} ports for {shards} shards",
            explicit.len()
        ));
    };
    for (i, &port) in ports.iter().enumerate() {
        if port == 0 {
            return Err(format!(
                "shard {i} has port 0: shard ports must be fixed so clients find a \
                 restarted broker"
            ));
        }
        if port == base || ports[..i].contains(&port) {
            return Err(format!(
                "shard port {port} is used twice ({base_flag} and {ports_flag} must all differ)"
            ));
        }
    }
    Ok(ports)
}

impl Listeners {
    fn resolve(args: &Args, shards: u32) -> Result<Listeners, String> {
        let listen: SocketAddr = args
            .listen
            .parse()
            .map_err(|e| format!("--listen {:?} is not ip:port: {e}", args.listen))?;
        let count = shards as usize;
        let ports = shard_ports(
            listen.port(),
            &args.shard_ports,
            shards,
            ("--listen", "--shard-ports"),
        )?;
        let (host, port) = match &args.advertise {
            None => (listen.ip().to_string(), listen.port()),
            Some(text) => parse_advertise(text, listen.port())?,
        };
        if args.advertise.is_none() && listen.ip().is_unspecified() {
            return Err(format!(
                "--listen {listen} is not an address clients can connect to; give --advertise \
                 with the host clients should use"
            ));
        }
        let advertised_ports = if args.advertise_shard_ports.is_empty() {
            ports.clone()
        } else if args.advertise_shard_ports.len() == count {
            args.advertise_shard_ports.clone()
        } else {
            return Err(format!(
                "--advertise-shard-ports lists {} ports for {shards} shards",
                args.advertise_shard_ports.len()
            ));
        };
        let join = |port: u16| {
            if host.contains(':') {
                format!("[{host}]:{port}") // an IPv6 literal
            } else {
                format!("{host}:{port}")
            }
        };
        let kafka = match args.kafka_listen.as_str() {
            "none" | "off" | "" => None,
            text => {
                let kafka: SocketAddr = text
                    .parse()
                    .map_err(|e| format!("--kafka-listen {text:?} is not ip:port or none: {e}"))?;
                let kafka_ports = shard_ports(
                    kafka.port(),
                    &args.kafka_shard_ports,
                    shards,
                    ("--kafka-listen", "--kafka-shard-ports"),
                )?;
                if kafka.ip().is_unspecified() && args.advertise.is_none() {
                    return Err(format!(
                        "--kafka-listen {kafka} is not an address clients can connect to; give \
                         --advertise with the host clients should use"
                    ));
                }
                let kafka_host = match &args.advertise {
                    Some(_) => host.clone(),
                    None => kafka.ip().to_string(),
                };
                let join_kafka = |port: u16| {
                    if kafka_host.contains(':') {
                        format!("[{kafka_host}]:{port}")
                    } else {
                        format!("{kafka_host}:{port}")
                    }
                };
                Some(crate::kafka::KafkaListeners {
                    listen: kafka,
                    shard_listen: kafka_ports
                        .iter()
                        .map(|&port| SocketAddr::new(kafka.ip(), port))
                        .collect(),
                    advertised_shards: kafka_ports.into_iter().map(join_kafka).collect(),
                })
            }
        };
        Ok(Listeners {
            shards: ports
                .iter()
                .map(|&port| SocketAddr::new(listen.ip(), port))
                .collect(),
            advertised: join(port),
            advertised_shards: advertised_ports.into_iter().map(join).collect(),
            kafka,
        })
    }
}

/// The metrics address: `--metrics-listen`, else the `--listen` address with the next port.
fn metrics_address_of(args: &Args) -> Result<String, String> {
    if let Some(address) = &args.metrics_listen {
        return Ok(address.clone());
    }
    let listen: SocketAddr = args
        .listen
        .parse()
        .map_err(|e| format!("--listen {:?} is not ip:port: {e}", args.listen))?;
    let port = listen.port().checked_add(1).ok_or_else(|| {
        format!(
            "--listen port {} leaves no port above it for metrics; give --metrics-listen",
            listen.port()
        )
    })?;
    Ok(SocketAddr::new(listen.ip(), port).to_string())
}

/// `host`, `host:port` or `[v6]:port`; the port defaults to `default_port`.
fn parse_advertise(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad = || format!("--advertise {text:?} is not host or host:port");
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().map_err(|_| bad())?,
            None if after.is_empty() => default_port,
            None => return Err(bad()),
        };
        return Ok((host.to_string(), port));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().map_err(|_| bad())?),
        Some(_) => (text, default_port), // a bare IPv6 literal
        None => (text, default_port),
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("sluice-broker: {message}");
    ExitCode::from(2)
}

/// Raises the soft limit on open files to the hard limit and says so: a broker holds one
/// descriptor per partition (its active segment), its sealed segments' descriptor caches
/// (`SEALED_FILES_OPEN_MAX` per shard) and its connections, beyond the usual soft 1,024.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open-files limit");
        return;
    }
    let soft = limit.rlim_cur;
    if soft < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            tracing::warn!(soft, hard = limit.rlim_max, error = %std::io::Error::last_os_error(), "cannot raise the open-files limit");
            return;
        }
    }
    tracing::info!(
        from = soft,
        to = limit.rlim_cur,
        hard = limit.rlim_max,
        "open-files limit (RLIMIT_NOFILE) raised to the hard limit"
    );
}

/// Runs a broker with the command line `args` (program name first) until it stops; what
/// `sluice-broker` does, callable from other binaries (the benchmark starts its embedded broker
/// as a child process of its own executable this way).
pub fn run(args: Vec<std::ffi::OsString>) -> ExitCode {
    let args = match arguments_with_config(args) {
        Ok(args) => Args::parse_from(args),
        Err(error) => return fail(error),
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log) {
        Ok(filter) => filter,
        Err(error) => return fail(format_args!("invalid --log filter: {error}")),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

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
    // Once the command line and the data directory are known good: a start-up error is one
    // line on stderr.
    raise_open_files_limit();
    let shards = args
        .shards
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    if shards == 0 {
        return fail("--shards must be at least 1");
    }
    let listeners = match Listeners::resolve(&args, shards) {
        Ok(listeners) => listeners,
        Err(error) => return fail(error),
    };
    let metrics_listen = match metrics_address_of(&args) {
        Ok(address) => address,
        Err(error) => return fail(error),
    };
    // Bound before anything starts, so a port in use is a start-up error naming the flag.
    let metrics_listener = match metrics_listen.as_str() {
        "none" | "off" | "" => None,
        address => match address.parse::<SocketAddr>() {
            Err(error) => {
                return fail(format_args!(
                    "--metrics-listen {address:?} is not ip:port or none: {error}"
                ))
            }
            Ok(address) => match std::net::TcpListener::bind(address)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
            {
                Ok(listener) => Some(listener),
                Err(error) => {
                    return fail(format_args!(
                        "cannot listen on {address} (--metrics-listen; `none` disables \
                         metrics): {error}"
                    ))
                }
            },
        },
    };
    // For the start-up log line.
    let (listen, metadata_address, node_id, shard_count) = (
        args.listen.clone(),
        metadata_listen.clone(),
        args.node_id,
        shards,
    );
    let metrics_address = metrics_listen.clone();
    let config = MetadataConfig {
        node_id: args.node_id,
        dir: metadata_dir,
        listen: metadata_listen,
        peers,
        broker_address: listeners.advertised.clone(),
        shards,
        shard_addresses: Vec::new(),
        kafka_addresses: Vec::new(),
        join: args.join.clone(),
        election_timeout_ms: args.election_timeout_ms,
        lease_ms: args.lease_ms,
        snapshot_logs: args.snapshot_logs,
    };

    let (state_tx, state_rx) = tokio::sync::watch::channel(Arc::new(ClusterState::default()));
    let (admin_tx, admin_rx) = flume::bounded::<AdminCall>(ADMIN_QUEUE_MAX);
    let (raft_tx, raft_rx) = tokio::sync::watch::channel(RaftStatus::default());
    let (state_rx_metrics, raft_rx_metrics) = (state_rx.clone(), raft_rx.clone());
    let shard_config = ShardConfig {
        node_id: args.node_id,
        data_dir: args.data_dir.clone(),
        listen: args.listen.clone(),
        shard_listen: listeners.shards.clone(),
        mode: args.mode,
        topic_defaults: args.topic_defaults(),
        retention_check_interval: Duration::from_millis(args.log_retention_check_interval_ms),
        groups: GroupsConfig {
            offsets_partitions: args.offsets_partitions,
            offsets_segment_bytes: args.offsets_segment_bytes,
            session_timeout_default: Duration::from_millis(args.group_session_timeout_ms),
            heartbeat_interval: Duration::from_millis(args.group_heartbeat_interval_ms),
            offsets_retention: Duration::from_millis(args.offsets_retention_ms),
            ..GroupsConfig::default()
        },
        kafka: listeners.kafka.clone(),
    };
    let shards = match Shards::start(
        shard_config,
        shards,
        MetadataLink {
            state: state_rx,
            admin: admin_tx,
            raft: raft_rx,
        },
    ) {
        Ok(shards) => shards,
        Err(error) => return fail(error),
    };
    let mut config = config;
    config.shard_addresses = listeners.advertised_shards.clone();
    config.kafka_addresses = listeners
        .kafka
        .as_ref()
        .map_or(Vec::new(), |k| k.advertised_shards.clone());
    let scraper = crate::metrics::http::Scraper {
        node_id: args.node_id,
        shards: shards.snapshots.clone(),
        state: state_rx_metrics,
        raft: raft_rx_metrics,
    };
    let (stopper, threads) = shards.split();
    // A shard thread that ends on its own has failed: stop the whole process.
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let watchers: Vec<std::thread::JoinHandle<()>> = threads
        .into_iter()
        .enumerate()
        .map(|(shard, thread)| {
            let failed_tx = failed_tx.clone();
            std::thread::spawn(move || {
                let outcome = thread
                    .join()
                    .map_err(|panic| {
                        format!(
                            "shard {shard} panicked: {}",
                            crate::shard::panic_message(&panic)
                        )
                    })
                    .and_then(|r| r)
                    .and_then(|r| r);
                let _ = failed_tx.send(outcome.err().unwrap_or_default());
            })
        })
        .collect();
    drop(failed_tx);

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(format_args!("cannot start the metadata runtime: {error}")),
    };
    let mut bootstrap = vec![config.listen.clone()];
    bootstrap.extend(config.peers.values().chain(&config.join).cloned());
    let outcome = runtime.block_on(async move {
        let node = match MetadataNode::start(config).await {
            Ok(node) => node,
            Err(error) => return Err(error.to_string()),
        };
        // Every applied metadata version goes to the shards.
        let mut applied = node.state();
        tokio::spawn(async move {
            loop {
                let current = applied.borrow_and_update().clone();
                state_tx.send_replace(current);
                if applied.changed().await.is_err() {
                    return;
                }
            }
        });
        // So does the Raft group's status (controller, term, indexes), for metadata answers
        // and metrics.
        let mut raft_metrics = node.raft().metrics();
        tokio::spawn(async move {
            let mut controller = None;
            loop {
                let status = {
                    let m = raft_metrics.borrow_and_update();
                    RaftStatus {
                        controller: m.current_leader,
                        term: m.current_term,
                        last_log_index: m.last_log_index.unwrap_or(0),
                        applied_index: m.last_applied.map_or(0, |l| l.index),
                    }
                };
                if status.controller != controller {
                    controller = status.controller;
                    match controller {
                        Some(id) => tracing::info!(
                            controller = id,
                            term = status.term,
                            "metadata controller changed"
                        ),
                        None => tracing::warn!(term = status.term, "no metadata controller"),
                    }
                }
                raft_tx.send_if_modified(|old| {
                    let changed = *old != status;
                    *old = status;
                    changed
                });
                if raft_metrics.changed().await.is_err() {
                    return;
                }
            }
        });
        // Shards' admin requests go to the controller, wherever it is.
        let client = AdminClient::new(bootstrap);
        tokio::spawn(async move {
            while let Ok(call) = admin_rx.recv_async().await {
                let client = client.clone();
                tokio::spawn(async move {
                    let _ = call.reply.send(client.request(call.request).await);
                });
            }
        });
        if let Some(listener) = metrics_listener {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| format!("cannot serve metrics: {e}"))?;
            tokio::spawn(crate::metrics::http::serve(listener, scraper));
        }
        tracing::info!(
            node = node.id(),
            listen = %listen,
            metadata = %metadata_address,
            metrics = %metrics_address,
            shards = shard_count,
            "broker started"
        );
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
        let failure = tokio::select! {
            _ = terminate.recv() => None,
            _ = tokio::signal::ctrl_c() => None,
            failure = failed_rx.recv() => Some(failure.unwrap_or_default()),
        };
        if let Some(failure) = failure {
            return Err(format!("stopping: {failure}"));
        }
        tracing::info!(node = node_id, "shutting down");
        // Leaderships first, so clients and followers move on while this broker still serves.
        node.controlled_shutdown(crate::limits::CONTROLLED_SHUTDOWN_WAIT)
            .await;
        stopper.stop();
        // Shards finish in-flight requests and flush; the metadata node keeps running meanwhile.
        // Bounded: a shard that cannot stop must not keep the process alive for ever (what it
        // acknowledged is durable; the next start recovers as after a crash).
        let stopped = tokio::time::timeout(crate::limits::SHARD_STOP_WAIT_MAX, async {
            while let Some(failure) = failed_rx.recv().await {
                if !failure.is_empty() {
                    return Err(failure);
                }
            }
            Ok(())
        })
        .await;
        node.shutdown().await;
        match stopped {
            Ok(outcome) => {
                tracing::info!(node = node_id, "broker stopped");
                outcome
            }
            Err(_) => Err(format!(
                "the shards did not stop within {:?}; exiting without closing their logs",
                crate::limits::SHARD_STOP_WAIT_MAX
            )),
        }
    });
    match outcome {
        Ok(()) => {
            for watcher in watchers {
                let _ = watcher.join();
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sluice-broker: {error}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> Args {
        Args::parse_from(std::iter::once("sluice-broker").chain(flags.iter().copied()))
    }

    #[test]
    fn shard_ports_derive_from_listen_and_can_be_given() {
        let derived = Listeners::resolve(&args(&["--listen", "127.0.0.1:9490"]), 2).unwrap();
        assert_eq!(
            derived.shards,
            vec![
                "127.0.0.1:9500".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:9501".parse().unwrap()
            ]
        );
        assert_eq!(derived.advertised, "127.0.0.1:9490");
        assert_eq!(
            derived.advertised_shards,
            ["127.0.0.1:9500", "127.0.0.1:9501"]
        );

        let given = Listeners::resolve(
            &args(&["--listen", "127.0.0.1:9490", "--shard-ports", "7001,7002"]),
            2,
        )
        .unwrap();
        assert_eq!(
            given.advertised_shards,
            ["127.0.0.1:7001", "127.0.0.1:7002"]
        );
    }

    #[test]
    fn advertise_replaces_the_host_and_ports_clients_see() {
        let behind_nat = Listeners::resolve(
            &args(&[
                "--listen",
                "0.0.0.0:9490",
                "--advertise",
                "broker-1.example:19490",
                "--advertise-shard-ports",
                "19500,19501",
            ]),
            2,
        )
        .unwrap();
        assert_eq!(
            behind_nat.shards[0],
            "0.0.0.0:9500".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(behind_nat.advertised, "broker-1.example:19490");
        assert_eq!(
            behind_nat.advertised_shards,
            ["broker-1.example:19500", "broker-1.example:19501"]
        );
        let host_only = Listeners::resolve(
            &args(&["--listen", "0.0.0.0:9490", "--advertise", "10.0.0.7"]),
            1,
        )
        .unwrap();
        assert_eq!(host_only.advertised, "10.0.0.7:9490");
        assert_eq!(host_only.advertised_shards, ["10.0.0.7:9500"]);
        let v6 = Listeners::resolve(&args(&["--listen", "[::1]:9490"]), 1).unwrap();
        assert_eq!(v6.advertised_shards, ["[::1]:9500"]);
    }

    #[test]
    fn the_metrics_port_follows_listen_unless_given() {
        assert_eq!(metrics_address_of(&args(&[])).unwrap(), "127.0.0.1:9491");
        assert_eq!(
            metrics_address_of(&args(&["--listen", "127.0.0.1:9590"])).unwrap(),
            "127.0.0.1:9591"
        );
        assert_eq!(
            metrics_address_of(&args(&["--metrics-listen", "none"])).unwrap(),
            "none"
        );
        assert!(metrics_address_of(&args(&["--listen", "127.0.0.1:65535"]))
            .unwrap_err()
            .contains("--metrics-listen"));
    }

    #[test]
    fn unusable_port_settings_are_start_up_errors() {
        let refused = |flags: &[&str], shards: u32| {
            Listeners::resolve(&args(flags), shards).expect_err("refused")
        };
        assert!(refused(&["--shard-ports", "7001"], 2).contains("2 shards"));
        assert!(refused(&["--shard-ports", "7001,7001"], 2).contains("twice"));
        assert!(
            refused(&["--listen", "127.0.0.1:7001", "--shard-ports", "7001"], 1).contains("twice")
        );
        assert!(refused(&["--shard-ports", "0"], 1).contains("port 0"));
        assert!(refused(&["--listen", "127.0.0.1:65530"], 8).contains("no room"));
        assert!(refused(&["--listen", "0.0.0.0:9490"], 1).contains("--advertise"));
        assert!(refused(&["--advertise", "host:notaport"], 1).contains("--advertise"));
        assert!(refused(&["--advertise-shard-ports", "1,2,3"], 2).contains("3 ports"));
    }
}
