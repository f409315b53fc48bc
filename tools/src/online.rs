//! The commands that talk to a running cluster through `sluice-client`: `cluster info|health`
//! and `topic create|list|describe|alter-config|delete`.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_client::{Admin, ClientConfig, Error, ErrorCode, LogDescription, MetadataResponse};

use crate::error::CliError;
use crate::output::{bytes, ids, print_json, table, Output};
use crate::CliResult;

/// Exit status of `cluster health` when the cluster is not healthy.
const EXIT_UNHEALTHY: u8 = 3;

/// Runs an online command on a runtime of its own.
pub fn block_on(command: impl Future<Output = CliResult>) -> CliResult {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("cannot start the I/O runtime: {e}")))?
        .block_on(command)
}

/// The client settings every command uses: short timeouts, since a person or a script waits.
pub fn client_config(brokers: &[String]) -> Result<ClientConfig, CliError> {
    if brokers.iter().all(|b| b.trim().is_empty()) {
        return Err(CliError::Usage(
            "--brokers is empty; give host:port of at least one broker".into(),
        ));
    }
    Ok(
        ClientConfig::new(brokers.iter().map(|b| b.trim().to_string()))
            .client_id("sluice-cli")
            .connect_timeout(Duration::from_secs(3))
            .request_timeout(Duration::from_secs(15))
            .retry_backoff(Duration::from_millis(50), Duration::from_millis(500)),
    )
}

pub fn admin(brokers: &[String]) -> Result<Admin, CliError> {
    Admin::new(client_config(brokers)?).map_err(|e| CliError::Usage(e.to_string()))
}

async fn describe(admin: &Admin, topics: Option<&[String]>) -> Result<MetadataResponse, CliError> {
    admin
        .describe_cluster(topics)
        .await
        .map_err(CliError::client("reading cluster metadata"))
}

pub async fn cluster_info(admin: &Admin, output: Output) -> CliResult {
    let metadata = describe(admin, Some(&[])).await?;
    let mut brokers = metadata.brokers;
    brokers.sort_by_key(|b| b.id);
    match output {
        Output::Json => print_json(&json!({
            "controller": metadata.controller,
            "metadata_version": metadata.version,
            "brokers": brokers.iter().map(|b| json!({
                "id": b.id,
                "address": b.address,
                "alive": b.alive,
                "shards": b.shard_addresses.len(),
                "shard_addresses": b.shard_addresses,
            })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            println!(
                "controller: {}  metadata version: {}",
                metadata
                    .controller
                    .map_or("none".to_string(), |c| c.to_string()),
                metadata.version
            );
            let rows: Vec<Vec<String>> = brokers
                .iter()
                .map(|b| {
                    vec![
                        b.id.to_string(),
                        b.address.clone(),
                        if b.alive { "alive" } else { "down" }.to_string(),
                        b.shard_addresses.len().to_string(),
                        b.shard_addresses.join(","),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["BROKER", "ADDRESS", "STATE", "SHARDS", "SHARD-ADDRESSES"],
                    &rows
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A partition that is not fully served.
#[derive(Debug)]
struct Problem {
    topic: String,
    partition: u32,
    leader: Option<u64>,
    replicas: Vec<u64>,
    in_sync: Vec<u64>,
}

pub async fn cluster_health(admin: &Admin, output: Output) -> CliResult {
    let metadata = describe(admin, None).await?;
    let alive: Vec<u64> = metadata
        .brokers
        .iter()
        .filter(|b| b.alive)
        .map(|b| b.id)
        .collect();
    let mut down: Vec<u64> = metadata
        .brokers
        .iter()
        .filter(|b| !b.alive)
        .map(|b| b.id)
        .collect();
    down.sort();
    let (mut offline, mut under) = (Vec::new(), Vec::new());
    let mut topics = metadata.topics;
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    for topic in &topics {
        for p in &topic.partitions {
            let problem = || Problem {
                topic: topic.name.clone(),
                partition: p.partition,
                leader: p.leader,
                replicas: p.replicas.clone(),
                in_sync: p.in_sync.clone(),
            };
            if p.leader.is_none_or(|l| !alive.contains(&l)) {
                offline.push(problem());
            } else if p.in_sync.len() < p.replicas.len() {
                under.push(problem());
            }
        }
    }
    let healthy = offline.is_empty() && under.is_empty() && down.is_empty();
    let as_json = |list: &[Problem]| -> Vec<Value> {
        list.iter()
            .map(|p| {
                json!({
                    "topic": p.topic, "partition": p.partition, "leader": p.leader,
                    "replicas": p.replicas, "in_sync": p.in_sync,
                })
            })
            .collect()
    };
    match output {
        Output::Json => print_json(&json!({
            "healthy": healthy,
            "controller": metadata.controller,
            "brokers_down": down,
            "offline_partitions": as_json(&offline),
            "under_replicated_partitions": as_json(&under),
        })),
        Output::Table => {
            println!("healthy: {}", if healthy { "yes" } else { "no" });
            println!(
                "controller: {}",
                metadata
                    .controller
                    .map_or("none".to_string(), |c| c.to_string())
            );
            println!("brokers down: {}", ids(&down));
            println!("offline partitions: {}", offline.len());
            println!("under-replicated partitions: {}", under.len());
            let rows: Vec<Vec<String>> = offline
                .iter()
                .map(|p| ("offline", p))
                .chain(under.iter().map(|p| ("under-replicated", p)))
                .map(|(state, p)| {
                    vec![
                        p.topic.clone(),
                        p.partition.to_string(),
                        state.to_string(),
                        p.leader.map_or("-".into(), |l| l.to_string()),
                        ids(&p.replicas),
                        ids(&p.in_sync),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                print!(
                    "{}",
                    table(
                        &[
                            "TOPIC",
                            "PARTITION",
                            "STATE",
                            "LEADER",
                            "REPLICAS",
                            "IN-SYNC"
                        ],
                        &rows
                    )
                );
            }
        }
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNHEALTHY)
    })
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Topic name: ASCII letters, digits, '.', '_' and '-'.
    name: String,
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Replication factor: how many brokers hold each partition.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// A setting overriding the broker's default, `key=value` (Kafka's names:
    /// retention.ms, retention.bytes, segment.bytes, segment.ms, max.message.bytes,
    /// min.insync.replicas, flush.policy, cleanup.policy, …); repeat for several.
    #[arg(long = "config", value_parser = parse_setting)]
    configs: Vec<(String, String)>,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{text:?} is not key=value")),
    }
}

pub async fn topic_create(admin: &Admin, args: CreateArgs, output: Output) -> CliResult {
    admin
        .create_topic_with_config(&args.name, args.partitions, args.replicas, &args.configs)
        .await
        .map_err(CliError::client(format!("creating topic {:?}", args.name)))?;
    match output {
        Output::Json => print_json(&json!({
            "topic": args.name, "partitions": args.partitions, "replicas": args.replicas,
        })),
        Output::Table => println!(
            "created topic {} ({} partitions, {} replicas)",
            args.name, args.partitions, args.replicas
        ),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn topic_list(admin: &Admin, output: Output) -> CliResult {
    let metadata = describe(admin, None).await?;
    let mut topics: Vec<(String, usize, usize)> = metadata
        .topics
        .iter()
        .filter(|t| t.error == ErrorCode::None)
        .map(|t| {
            let replicas = t.partitions.first().map_or(0, |p| p.replicas.len());
            (t.name.clone(), t.partitions.len(), replicas)
        })
        .collect();
    topics.sort();
    match output {
        Output::Json => print_json(&json!({
            "topics": topics.iter().map(|(name, partitions, replicas)| json!({
                "name": name, "partitions": partitions, "replicas": replicas,
            })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            let rows: Vec<Vec<String>> = topics
                .iter()
                .map(|(n, p, r)| vec![n.clone(), p.to_string(), r.to_string()])
                .collect();
            print!("{}", table(&["TOPIC", "PARTITIONS", "REPLICAS"], &rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn topic_describe(admin: &Admin, name: &str, output: Output) -> CliResult {
    let names = [name.to_string()];
    let metadata = describe(admin, Some(&names)).await?;
    let topic = metadata
        .topics
        .iter()
        .find(|t| t.name == name && t.error == ErrorCode::None)
        .ok_or_else(|| CliError::Client {
            doing: format!("describing topic {name:?}"),
            error: Error::UnknownTopic {
                topic: name.to_string(),
            },
        })?;
    let configs = admin
        .describe_configs(name)
        .await
        .map_err(CliError::client(format!("describing topic {name:?}")))?;
    // Each replica's log, from every shard of every live broker; a shard that does not answer
    // leaves its replicas' figures unknown (null, `?`) rather than failing the command.
    let mut logs: BTreeMap<(u32, u64), LogDescription> = BTreeMap::new();
    let mut unreachable = Vec::new();
    for broker in metadata.brokers.iter().filter(|b| b.alive) {
        for address in &broker.shard_addresses {
            match admin.describe_logs(address, &names).await {
                Ok(answer) => {
                    for log in answer.logs {
                        logs.insert((log.partition, answer.broker_id), log);
                    }
                }
                Err(_) => unreachable.push(address.clone()),
            }
        }
    }
    if !unreachable.is_empty() {
        eprintln!(
            "sluice: warning: no answer from {}; their logs are shown as unknown",
            unreachable.join(", ")
        );
    }
    let mut partitions = topic.partitions.clone();
    partitions.sort_by_key(|p| p.partition);
    let leader_log = |p: &sluice_client::PartitionMetadata| {
        p.leader
            .and_then(|l| logs.get(&(p.partition, l)))
            .filter(|log| log.leader)
    };
    let replicas = partitions.first().map_or(0, |p| p.replicas.len());
    match output {
        Output::Json => {
            let parts: Vec<Value> = partitions
                .iter()
                .map(|p| {
                    let log = leader_log(p);
                    json!({
                        "partition": p.partition,
                        "leader": p.leader,
                        "leader_epoch": p.leader_epoch,
                        "replicas": p.replicas,
                        "in_sync": p.in_sync,
                        "log_start": log.map(|l| l.log_start),
                        "log_end": log.map(|l| l.log_end),
                        "high_watermark": log.map(|l| l.high_watermark),
                        "size_bytes": log.map(|l| l.size_bytes),
                        "replica_logs": p.replicas.iter().map(|r| {
                            let log = logs.get(&(p.partition, *r));
                            json!({
                                "broker": r,
                                "log_start": log.map(|l| l.log_start),
                                "log_end": log.map(|l| l.log_end),
                                "durable_end": log.map(|l| l.durable_end),
                                "size_bytes": log.map(|l| l.size_bytes),
                            })
                        }).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let config: serde_json::Map<String, Value> = configs
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            print_json(&json!({
                "name": name,
                "replicas": replicas,
                "config": config,
                "partitions": parts,
            }));
        }
        Output::Table => {
            println!(
                "topic {name}: {} partitions, {replicas} replicas",
                partitions.len()
            );
            let settings: Vec<String> = configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("config: {}", settings.join(" "));
            let unknown = || "?".to_string();
            let rows: Vec<Vec<String>> = partitions
                .iter()
                .map(|p| {
                    let log = leader_log(p);
                    vec![
                        p.partition.to_string(),
                        p.leader.map_or("-".into(), |l| l.to_string()),
                        p.leader_epoch.to_string(),
                        ids(&p.replicas),
                        ids(&p.in_sync),
                        log.map_or_else(unknown, |l| l.log_start.to_string()),
                        log.map_or_else(unknown, |l| l.log_end.to_string()),
                        log.map_or_else(unknown, |l| l.high_watermark.to_string()),
                        log.map_or_else(unknown, |l| bytes(l.size_bytes)),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "PARTITION",
                        "LEADER",
                        "EPOCH",
                        "REPLICAS",
                        "IN-SYNC",
                        "LOG-START",
                        "LOG-END",
                        "HIGH-WATERMARK",
                        "SIZE"
                    ],
                    &rows
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn topic_delete(admin: &Admin, name: &str, output: Output) -> CliResult {
    admin.delete_topic(name).await.map_err(|error| {
        let error = match error {
            Error::Broker {
                code: ErrorCode::UnknownTopicOrPartition,
                ..
            } => Error::UnknownTopic {
                topic: name.to_string(),
            },
            other => other,
        };
        CliError::Client {
            doing: format!("deleting topic {name:?}"),
            error,
        }
    })?;
    match output {
        Output::Json => print_json(&json!({ "topic": name, "deleted": true })),
        Output::Table => println!("deleted topic {name}"),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct AlterArgs {
    name: String,
    /// A setting to change, `key=value`; repeat for several.
    #[arg(long = "config", value_parser = parse_setting, required = true)]
    configs: Vec<(String, String)>,
}

pub async fn topic_alter_config(admin: &Admin, args: AlterArgs, output: Output) -> CliResult {
    let doing = format!("altering topic {:?}", args.name);
    admin
        .alter_topic_config(&args.name, &args.configs)
        .await
        .map_err(CliError::client(doing.clone()))?;
    let configs = admin
        .describe_configs(&args.name)
        .await
        .map_err(CliError::client(doing))?;
    match output {
        Output::Json => {
            let config: serde_json::Map<String, Value> = configs
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            print_json(&json!({ "topic": args.name, "config": config }));
        }
        Output::Table => {
            let changed: Vec<String> = args
                .configs
                .iter()
                .map(|(k, _)| {
                    let now = configs
                        .iter()
                        .find(|(key, _)| key == k)
                        .map_or("?", |(_, v)| v.as_str());
                    format!("{k}={now}")
                })
                .collect();
            println!("altered topic {}: {}", args.name, changed.join(" "));
        }
    }
    Ok(ExitCode::SUCCESS)
}
