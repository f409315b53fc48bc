//! `sluice`: Sluice's command-line tool. Online, through the native client against running
//! brokers: `cluster info|health`, `topic create|list|describe|alter-config|add-partitions|
//! delete`, `group list|describe|delete|reset-offsets`, `partition elect-leader|move`, console
//! `produce` and `consume` (alone or in a consumer group). Offline, on a stopped broker's files: `log dump|verify`. And `completions` for
//! shells.
//!
//! Every online command prints a table, or with `--output json` one JSON document whose keys
//! are documented in `docs/operations.md` and kept stable. Exit codes: 0 success, 1 an error
//! (one line on stderr naming the problem and what to do), 2 a bad command line, 3 `cluster
//! health` found the cluster unhealthy.

mod console;
mod error;
mod group;
mod log;
mod online;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::error::CliError;
use crate::output::Output;

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "Sluice command-line tool")]
struct Cli {
    /// Brokers to bootstrap from, comma-separated `host:port` native addresses.
    #[arg(
        long,
        global = true,
        env = "SLUICE_BROKERS",
        default_value = "127.0.0.1:9490",
        value_delimiter = ','
    )]
    brokers: Vec<String>,
    /// `table` for people, `json` for scripts (keys documented in docs/operations.md).
    #[arg(long, global = true, value_enum, default_value = "table")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The cluster: brokers, controller, health.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Topics: create, list, describe, alter-config, add-partitions, delete.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Consumer groups: members, assignments, committed offsets and lag; delete; reset offsets.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Partitions' placement: elect the preferred leader, move to other brokers.
    Partition {
        #[command(subcommand)]
        command: PartitionCommand,
    },
    /// Write records read from stdin, one per line (like `kcat -P`).
    Produce(console::ProduceArgs),
    /// Print records of a topic (like `kcat -C`).
    Consume(console::ConsumeArgs),
    /// Partition logs on disk (offline: run them on a stopped broker's files or a copy).
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Print a shell completion script (e.g. `sluice completions bash > /etc/bash_completion.d/sluice`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Brokers (address, state, shards), the controller and the metadata version.
    Info,
    /// Offline and under-replicated partitions and dead brokers; exits 3 if there are any.
    Health,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create(online::CreateArgs),
    /// List topics with their partition and replica counts.
    List,
    /// A topic's configuration and, per partition: leader, replicas, in-sync set, log start
    /// and end, high watermark, size on disk.
    Describe { name: String },
    /// Change settings of a running topic: retention.ms, retention.bytes,
    /// min.insync.replicas, replica.lag.time.max.ms, unclean.leader.election.enable.
    AlterConfig(online::AlterArgs),
    /// Grow a topic to `--count` partitions in all (keyed records then map to other
    /// partitions).
    AddPartitions {
        name: String,
        /// The new partition count, more than the topic has.
        #[arg(long)]
        count: u32,
    },
    /// Delete a topic and all its data.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Every group with its state and member count.
    List,
    /// A group's state, epoch, assignor, members with their assignments, and committed
    /// offsets with the high watermark and lag of each partition.
    Describe { group: String },
    /// Delete a group with no members, and its committed offsets.
    Delete { group: String },
    /// Set a group's committed offsets on a topic (only while it has no members).
    ResetOffsets(group::ResetArgs),
}

#[derive(Debug, Subcommand)]
enum PartitionCommand {
    /// Give leadership back to the partition's preferred replica (the first of its
    /// replicas), which must be alive and in sync.
    ElectLeader { topic: String, partition: u32 },
    /// Start moving a partition to other brokers; the first listed becomes its preferred
    /// leader. The new replicas catch up, then the old ones are dropped.
    Move {
        topic: String,
        partition: u32,
        /// Broker ids to hold the partition, comma-separated (`--brokers` is the connection).
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Print a segment's batches: offsets, timestamps, sizes, producer, CRC status.
    Dump {
        /// A segment file (`00000000000000000000.log`).
        path: PathBuf,
        /// Also print every record: offset, timestamp, key, value, headers.
        #[arg(long)]
        records: bool,
    },
    /// Check every segment and index of a partition directory; exit 1 at the first damage,
    /// naming the file and position.
    Verify {
        /// A partition directory.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (brokers, output) = (cli.brokers, cli.output);
    let outcome = match cli.command {
        Command::Log { command } => return run_log(command),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sluice", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Cluster { command } => online::block_on(async {
            let admin = online::admin(&brokers)?;
            match command {
                ClusterCommand::Info => online::cluster_info(&admin, output).await,
                ClusterCommand::Health => online::cluster_health(&admin, output).await,
            }
        }),
        Command::Topic { command } => online::block_on(async {
            let admin = online::admin(&brokers)?;
            match command {
                TopicCommand::Create(args) => online::topic_create(&admin, args, output).await,
                TopicCommand::List => online::topic_list(&admin, output).await,
                TopicCommand::AlterConfig(args) => {
                    online::topic_alter_config(&admin, args, output).await
                }
                TopicCommand::Describe { name } => {
                    online::topic_describe(&admin, &name, output).await
                }
                TopicCommand::AddPartitions { name, count } => {
                    group::topic_add_partitions(&admin, &name, count, output).await
                }
                TopicCommand::Delete { name } => online::topic_delete(&admin, &name, output).await,
            }
        }),
        Command::Group { command } => online::block_on(async {
            let admin = online::admin(&brokers)?;
            match command {
                GroupCommand::List => group::group_list(&admin, output).await,
                GroupCommand::Describe { group } => {
                    group::group_describe(&admin, &group, output).await
                }
                GroupCommand::Delete { group } => group::group_delete(&admin, &group, output).await,
                GroupCommand::ResetOffsets(args) => {
                    group::group_reset_offsets(&admin, args, output).await
                }
            }
        }),
        Command::Partition { command } => online::block_on(async {
            let admin = online::admin(&brokers)?;
            match command {
                PartitionCommand::ElectLeader { topic, partition } => {
                    group::partition_elect_leader(&admin, &topic, partition, output).await
                }
                PartitionCommand::Move {
                    topic,
                    partition,
                    replicas,
                } => group::partition_move(&admin, &topic, partition, &replicas, output).await,
            }
        }),
        Command::Produce(args) => {
            online::block_on(async { console::produce(&brokers, args, output).await })
        }
        Command::Consume(args) => {
            online::block_on(async { console::consume(&brokers, args, output).await })
        }
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("sluice: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn run_log(command: LogCommand) -> ExitCode {
    let outcome = match command {
        LogCommand::Dump { path, records } => log::dump(&path, records),
        LogCommand::Verify { dir } => log::verify(&dir),
    };
    match outcome {
        Ok(outcome) => {
            print!("{}", outcome.output);
            if outcome.damaged {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(log::ToolError(message)) => {
            eprintln!("sluice: {message}");
            ExitCode::from(2)
        }
    }
}

/// What the online commands return.
pub type CliResult = Result<ExitCode, CliError>;
