//! The commands on consumer groups and on partitions' placement: `group
//! list|describe|delete|reset-offsets`, `topic add-partitions`, `partition
//! elect-leader|move`. Each goes through the client's `Admin`, as applications do.

use std::process::ExitCode;

use serde_json::{json, Value};
use sluice_client::{Admin, Error, ErrorCode, GroupDescription, Seek, TopicPartition};

use crate::error::CliError;
use crate::output::{ids, print_json, table, Output};
use crate::CliResult;

/// `UnknownTopicOrPartition` from the broker, as the client's named error (its remedy names
/// `sluice topic list`).
fn topic_error(topic: &str, error: Error) -> Error {
    match error {
        Error::Broker {
            code: ErrorCode::UnknownTopicOrPartition,
            ..
        } => Error::UnknownTopic {
            topic: topic.to_string(),
        },
        other => other,
    }
}

pub async fn group_list(admin: &Admin, output: Output) -> CliResult {
    let groups = admin
        .list_groups()
        .await
        .map_err(CliError::client("listing groups"))?;
    match output {
        Output::Json => print_json(&json!({
            "groups": groups.iter().map(|g| json!({
                "group": g.group, "type": g.group_type, "state": g.state, "members": g.members,
            })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            let rows: Vec<Vec<String>> = groups
                .iter()
                .map(|g| {
                    vec![
                        g.group.clone(),
                        g.group_type.clone(),
                        g.state.clone(),
                        g.members.to_string(),
                    ]
                })
                .collect();
            print!("{}", table(&["GROUP", "TYPE", "STATE", "MEMBERS"], &rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn describe(admin: &Admin, group: &str, doing: String) -> Result<GroupDescription, CliError> {
    admin
        .describe_group(group)
        .await
        .map_err(CliError::client(doing))
}

fn assignment(list: &[TopicPartition]) -> String {
    if list.is_empty() {
        return "-".into();
    }
    list.iter()
        .map(|tp| format!("{}/{}", tp.topic, tp.partition))
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn group_describe(admin: &Admin, group: &str, output: Output) -> CliResult {
    let mut d = describe(admin, group, format!("describing group {group:?}")).await?;
    d.members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    for m in &mut d.members {
        m.assignment.sort();
    }
    d.offsets.sort_by(|a, b| a.tp.cmp(&b.tp));
    match output {
        Output::Json => print_json(&json!({
            "group": d.group,
            "state": d.state,
            "group_epoch": d.group_epoch,
            "assignor": d.assignor,
            "members": d.members.iter().map(|m| json!({
                "member_id": m.member_id,
                "instance_id": m.instance_id,
                "member_epoch": m.member_epoch,
                "assignment": m.assignment.iter().map(|tp| json!({
                    "topic": tp.topic, "partition": tp.partition,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "offsets": d.offsets.iter().map(|o| json!({
                "topic": o.tp.topic,
                "partition": o.tp.partition,
                "committed": o.committed,
                "high_watermark": o.high_watermark,
                "lag": o.lag,
            })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            println!(
                "group {}: {}, group epoch {}, assignor {}, {} members",
                d.group,
                d.state,
                d.group_epoch,
                d.assignor,
                d.members.len()
            );
            if !d.members.is_empty() {
                let rows: Vec<Vec<String>> = d
                    .members
                    .iter()
                    .map(|m| {
                        vec![
                            m.member_id.clone(),
                            m.instance_id.clone().unwrap_or_else(|| "-".into()),
                            m.member_epoch.to_string(),
                            assignment(&m.assignment),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["MEMBER", "INSTANCE", "EPOCH", "ASSIGNMENT"], &rows)
                );
            }
            let unknown = || "?".to_string();
            let rows: Vec<Vec<String>> = d
                .offsets
                .iter()
                .map(|o| {
                    vec![
                        o.tp.topic.clone(),
                        o.tp.partition.to_string(),
                        o.committed.to_string(),
                        o.high_watermark.map_or_else(unknown, |h| h.to_string()),
                        o.lag.map_or_else(unknown, |l| l.to_string()),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["TOPIC", "PARTITION", "COMMITTED", "HIGH-WATERMARK", "LAG"],
                    &rows
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn group_delete(admin: &Admin, group: &str, output: Output) -> CliResult {
    admin
        .delete_group(group)
        .await
        .map_err(CliError::client(format!("deleting group {group:?}")))?;
    match output {
        Output::Json => print_json(&json!({ "group": group, "deleted": true })),
        Output::Table => println!("deleted group {group}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `reset-offsets` moves a group's committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(u64),
    Time(i64),
}

fn parse_reset_to(text: &str) -> Result<ResetTo, String> {
    match text {
        "earliest" => Ok(ResetTo::Earliest),
        "latest" => Ok(ResetTo::Latest),
        _ => {
            if let Some(n) = text.strip_prefix("offset:") {
                n.parse()
                    .map(ResetTo::Offset)
                    .map_err(|_| format!("offset:{n}: not an offset"))
            } else if let Some(ms) = text.strip_prefix("time:") {
                ms.parse()
                    .map(ResetTo::Time)
                    .map_err(|_| format!("time:{ms}: not milliseconds since the epoch"))
            } else {
                Err(format!(
                    "{text:?}: use earliest, latest, offset:N or time:MS"
                ))
            }
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    group: String,
    #[arg(long)]
    topic: String,
    /// Reset only this partition (default: every partition of the topic).
    #[arg(long)]
    partition: Option<u32>,
    /// earliest, latest (the high watermark), offset:N, or time:MS (the first record at or
    /// after that time, in ms since the epoch; the end of the log if none is that recent).
    #[arg(long, value_parser = parse_reset_to)]
    to: ResetTo,
    /// Print the plan (current and new offset per partition) and change nothing.
    #[arg(long)]
    dry_run: bool,
}

pub async fn group_reset_offsets(admin: &Admin, args: ResetArgs, output: Output) -> CliResult {
    let group = args.group.as_str();
    let doing = format!("resetting offsets of group {group:?}");
    let partitions = admin
        .partition_count(&args.topic)
        .await
        .map_err(CliError::client(doing.clone()))?;
    let chosen: Vec<u32> = match args.partition {
        Some(p) if p < partitions => vec![p],
        Some(p) => {
            return Err(CliError::Client {
                doing,
                error: Error::UnknownPartition {
                    topic: args.topic.clone(),
                    partition: p,
                    partitions,
                },
            })
        }
        None => (0..partitions).collect(),
    };
    // The current offsets, and whether the group has members: a reset under running members
    // would be overwritten by their next commit, so the coordinator refuses it; say so before
    // resolving anything. A group that does not exist yet is created by the reset.
    let current = match admin.describe_group(group).await {
        Ok(d) => Some(d),
        Err(Error::Broker {
            code: ErrorCode::GroupIdNotFound,
            ..
        }) => None,
        Err(error) => return Err(CliError::Client { doing, error }),
    };
    if let Some(d) = current.as_ref().filter(|d| !d.members.is_empty()) {
        return Err(refused(group, d.members.len()));
    }
    let mut plan: Vec<(TopicPartition, Option<u64>, u64)> = Vec::with_capacity(chosen.len());
    for p in chosen {
        let tp = TopicPartition::new(args.topic.clone(), p);
        let seek = match args.to {
            ResetTo::Earliest => Seek::Earliest,
            ResetTo::Latest => Seek::Latest,
            ResetTo::Offset(o) => Seek::Offset(o),
            ResetTo::Time(ms) => Seek::Timestamp(ms),
        };
        let new = match admin
            .offset(&tp, seek)
            .await
            .map_err(CliError::client(doing.clone()))?
        {
            Some(o) => o,
            // No record that recent: the end of the log, as a consumer seeking there would.
            None => admin
                .offset(&tp, Seek::Latest)
                .await
                .map_err(CliError::client(doing.clone()))?
                .unwrap_or(0),
        };
        let old = current
            .as_ref()
            .and_then(|d| d.offsets.iter().find(|o| o.tp == tp))
            .map(|o| o.committed);
        plan.push((tp, old, new));
    }
    if !args.dry_run {
        let offsets: Vec<(TopicPartition, u64)> =
            plan.iter().map(|(tp, _, new)| (tp.clone(), *new)).collect();
        admin
            .reset_offsets(group, &offsets)
            .await
            .map_err(|error| match error {
                Error::Broker {
                    code: ErrorCode::NonEmptyGroup,
                    ..
                } => refused(group, 0),
                error => CliError::Client {
                    doing: doing.clone(),
                    error,
                },
            })?;
    }
    match output {
        Output::Json => print_json(&json!({
            "group": group,
            "dry_run": args.dry_run,
            "offsets": plan.iter().map(|(tp, old, new)| json!({
                "topic": tp.topic, "partition": tp.partition, "previous": old, "offset": new,
            })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            println!(
                "{} offsets of group {group} on {}",
                if args.dry_run {
                    "would reset (dry run)"
                } else {
                    "reset"
                },
                args.topic
            );
            let rows: Vec<Vec<String>> = plan
                .iter()
                .map(|(tp, old, new)| {
                    vec![
                        tp.topic.clone(),
                        tp.partition.to_string(),
                        old.map_or("-".into(), |o| o.to_string()),
                        new.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["TOPIC", "PARTITION", "PREVIOUS", "NEW"], &rows)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The coordinator refuses resets while the group has members (`members` 0: the count is not
/// known, the refusal came from the coordinator itself).
fn refused(group: &str, members: usize) -> CliError {
    let who = if members == 0 {
        "active members".to_string()
    } else {
        format!("{members} active member(s)")
    };
    CliError::Other(format!(
        "resetting offsets of group {group:?}: refused, the group has {who}; stop its \
         consumers (see `sluice group describe {group}`) and retry"
    ))
}

pub async fn topic_add_partitions(
    admin: &Admin,
    topic: &str,
    count: u32,
    output: Output,
) -> CliResult {
    let doing = format!("adding partitions to topic {topic:?}");
    let before = admin
        .partition_count(topic)
        .await
        .map_err(CliError::client(doing.clone()))?;
    if count <= before {
        return Err(CliError::Other(format!(
            "{doing}: it has {before} partitions already; --count is the new total and must \
             be more than {before} (partitions cannot be removed)"
        )));
    }
    admin
        .add_partitions(topic, count)
        .await
        .map_err(|e| CliError::Client {
            doing,
            error: topic_error(topic, e),
        })?;
    match output {
        Output::Json => print_json(&json!({
            "topic": topic, "previous_partitions": before, "partitions": count,
        })),
        Output::Table => println!("topic {topic}: {before} -> {count} partitions"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The partition's state once a command on it is done, checking it exists first.
async fn partition_state(
    admin: &Admin,
    topic: &str,
    partition: u32,
    doing: &str,
) -> Result<sluice_client::PartitionState, CliError> {
    let partitions = admin
        .partitions(topic)
        .await
        .map_err(|e| CliError::Client {
            doing: doing.to_string(),
            error: topic_error(topic, e),
        })?;
    let count = partitions.len() as u32;
    partitions
        .into_iter()
        .find(|p| p.partition == partition)
        .ok_or_else(|| CliError::Client {
            doing: doing.to_string(),
            error: Error::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions: count,
            },
        })
}

fn partition_json(topic: &str, p: &sluice_client::PartitionState) -> Value {
    json!({
        "topic": topic,
        "partition": p.partition,
        "leader": p.leader,
        "leader_epoch": p.leader_epoch,
        "replicas": p.replicas,
        "in_sync": p.in_sync,
    })
}

pub async fn partition_elect_leader(
    admin: &Admin,
    topic: &str,
    partition: u32,
    output: Output,
) -> CliResult {
    let doing = format!("electing the preferred leader of {topic}/{partition}");
    partition_state(admin, topic, partition, &doing).await?;
    admin
        .elect_preferred_leader(topic, partition)
        .await
        .map_err(|e| CliError::Client {
            doing: doing.clone(),
            error: topic_error(topic, e),
        })?;
    let p = partition_state(admin, topic, partition, &doing).await?;
    match output {
        Output::Json => print_json(&partition_json(topic, &p)),
        Output::Table => println!(
            "{topic}/{partition}: leader {} (epoch {}), replicas {}, in-sync {}",
            p.leader.map_or("-".into(), |l| l.to_string()),
            p.leader_epoch,
            ids(&p.replicas),
            ids(&p.in_sync)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn partition_move(
    admin: &Admin,
    topic: &str,
    partition: u32,
    replicas: &[u64],
    output: Output,
) -> CliResult {
    let doing = format!("moving {topic}/{partition}");
    if replicas.is_empty() {
        return Err(CliError::Usage(
            "--replicas is empty; give the broker ids to hold the partition, e.g. 1,2,3".into(),
        ));
    }
    let mut unique = replicas.to_vec();
    unique.sort();
    unique.dedup();
    if unique.len() != replicas.len() {
        return Err(CliError::Usage(format!(
            "--replicas {} names a broker twice",
            ids(replicas)
        )));
    }
    let before = partition_state(admin, topic, partition, &doing).await?;
    admin
        .reassign_partition(topic, partition, replicas)
        .await
        .map_err(|e| CliError::Client {
            doing: doing.clone(),
            error: topic_error(topic, e),
        })?;
    match output {
        Output::Json => print_json(&json!({
            "topic": topic,
            "partition": partition,
            "previous_replicas": before.replicas,
            "target_replicas": replicas,
            "started": true,
        })),
        Output::Table => println!(
            "moving {topic}/{partition} from brokers {} to {}; watch `sluice topic describe \
             {topic}` until its replicas are {}",
            ids(&before.replicas),
            ids(replicas),
            ids(replicas)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_targets_parse_and_bad_ones_name_the_choices() {
        assert_eq!(parse_reset_to("earliest"), Ok(ResetTo::Earliest));
        assert_eq!(parse_reset_to("latest"), Ok(ResetTo::Latest));
        assert_eq!(parse_reset_to("offset:42"), Ok(ResetTo::Offset(42)));
        assert_eq!(
            parse_reset_to("time:1700000000000"),
            Ok(ResetTo::Time(1_700_000_000_000))
        );
        assert!(parse_reset_to("offset:-1").is_err());
        let bad = parse_reset_to("middle").unwrap_err();
        assert!(
            bad.contains("earliest, latest, offset:N or time:MS"),
            "{bad}"
        );
    }
}
