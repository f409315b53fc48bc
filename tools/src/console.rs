//! Console producer and consumer: `sluice produce` (stdin, one record per line) and `sluice
//! consume` (records printed with a format, or as JSON lines; alone or as a member of a
//! consumer group).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use sluice_client::{
    Acks, Admin, Compression, Consumer, ConsumerConfig, ConsumerRecord, Delivery, OffsetReset,
    Producer, ProducerConfig, ProducerRecord, Seek, TopicPartition,
};

use crate::error::CliError;
use crate::online::client_config;
use crate::output::{print_json, Output};
use crate::CliResult;

/// Deliveries awaited at most before the next record is read: bounds the memory of a long
/// stdin while the producer's own buffer bounds the bytes.
const DELIVERIES_PENDING_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AcksArg {
    /// Do not wait for the broker (no offsets, no errors reported).
    None,
    /// Durable on the partition's leader.
    Leader,
    /// Durable on every in-sync replica.
    All,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompressionArg {
    None,
    Lz4,
    Zstd,
}

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    topic: String,
    /// Split each line at the first occurrence of this string into key and value (a line
    /// without it has no key).
    #[arg(long)]
    key_separator: Option<String>,
    /// Write every record to this partition (default: by key, keyless records spread).
    #[arg(long)]
    partition: Option<u32>,
    #[arg(long, value_enum, default_value = "all")]
    acks: AcksArg,
    #[arg(long, value_enum, default_value = "none")]
    compression: CompressionArg,
    /// How long a batch waits for more records before it is sent.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
}

pub async fn produce(brokers: &[String], args: ProduceArgs, output: Output) -> CliResult {
    if args.key_separator.as_deref() == Some("") {
        return Err(CliError::Usage("--key-separator must not be empty".into()));
    }
    let config = ProducerConfig::new(client_config(brokers)?)
        .acks(match args.acks {
            AcksArg::None => Acks::None,
            AcksArg::Leader => Acks::Leader,
            AcksArg::All => Acks::All,
        })
        .compression(match args.compression {
            CompressionArg::None => Compression::None,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd { level: 3 },
        })
        .linger(Duration::from_millis(args.linger_ms))
        .delivery_timeout(Duration::from_secs(30));
    let doing = format!("producing to {:?}", args.topic);
    let producer = Producer::new(config)
        .await
        .map_err(CliError::client(doing.clone()))?;
    // Fail before reading stdin when the topic or partition does not exist.
    let admin = Admin::new(client_config(brokers)?).map_err(CliError::client(doing.clone()))?;
    let partitions = admin
        .partition_count(&args.topic)
        .await
        .map_err(CliError::client(doing.clone()))?;
    if let Some(p) = args.partition {
        if p >= partitions {
            return Err(CliError::Client {
                doing,
                error: sluice_client::Error::UnknownPartition {
                    topic: args.topic.clone(),
                    partition: p,
                    partitions,
                },
            });
        }
    }
    let mut pending: VecDeque<Delivery> = VecDeque::new();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut per_partition: HashMap<u32, u64> = HashMap::new();
    let mut settle = |delivery: sluice_client::Result<sluice_client::RecordMetadata>| {
        delivery.map(|meta| {
            *per_partition.entry(meta.partition).or_default() += 1;
        })
    };
    let stdin = std::io::stdin();
    // Lines are bytes: a record need not be UTF-8.
    for line in stdin.lock().split(b'\n') {
        let line = line.map_err(|e| CliError::Other(format!("reading stdin: {e}")))?;
        let (key, value) = match &args.key_separator {
            Some(sep) => match find(&line, sep.as_bytes()) {
                Some(at) => (Some(line[..at].to_vec()), line[at + sep.len()..].to_vec()),
                None => (None, line),
            },
            None => (None, line),
        };
        bytes += (value.len() + key.as_ref().map_or(0, Vec::len)) as u64;
        let mut record = ProducerRecord::new(args.topic.clone()).value(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(p) = args.partition {
            record = record.partition(p);
        }
        let delivery = producer
            .send(record)
            .await
            .map_err(CliError::client(doing.clone()))?;
        records += 1;
        pending.push_back(delivery);
        if pending.len() >= DELIVERIES_PENDING_MAX {
            if let Some(d) = pending.pop_front() {
                settle(d.await).map_err(CliError::client(doing.clone()))?;
            }
        }
    }
    producer
        .flush()
        .await
        .map_err(CliError::client(doing.clone()))?;
    for d in pending {
        settle(d.await).map_err(CliError::client(doing.clone()))?;
    }
    producer
        .close()
        .await
        .map_err(CliError::client(doing.clone()))?;
    let mut partitions: Vec<(u32, u64)> = per_partition.into_iter().collect();
    partitions.sort();
    match output {
        Output::Json => print_json(&json!({
            "topic": args.topic,
            "records": records,
            "bytes": bytes,
            "partitions": partitions.iter().map(|(p, n)| json!({"partition": p, "records": n}))
                .collect::<Vec<_>>(),
        })),
        Output::Table => eprintln!(
            "produced {records} records ({bytes} bytes) to {}",
            args.topic
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Where `consume` starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    Beginning,
    End,
    Offset(u64),
    Time(i64),
}

fn parse_from(text: &str) -> Result<From, String> {
    match text {
        "beginning" => Ok(From::Beginning),
        "end" => Ok(From::End),
        _ => {
            if let Some(n) = text.strip_prefix("offset:") {
                n.parse()
                    .map(From::Offset)
                    .map_err(|_| format!("offset:{n}: not an offset"))
            } else if let Some(ms) = text.strip_prefix("time:") {
                ms.parse()
                    .map(From::Time)
                    .map_err(|_| format!("time:{ms}: not milliseconds since the epoch"))
            } else {
                Err(format!("{text:?}: use beginning, end, offset:N or time:MS"))
            }
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    topic: String,
    /// Where to start: beginning, end, offset:N, or time:MS (the first record at or after
    /// that time, in ms since the epoch).
    #[arg(long, default_value = "beginning", value_parser = parse_from)]
    from: From,
    /// Read only this partition (default: all).
    #[arg(long, conflicts_with = "group")]
    partition: Option<u32>,
    /// Join this consumer group: read the partitions the group assigns, from its committed
    /// offsets (--from beginning|end where it has none), commit after each batch printed,
    /// and leave the group at exit (after --count records, or on Ctrl-C).
    #[arg(long)]
    group: Option<String>,
    /// Stop after this many records.
    #[arg(long)]
    count: Option<u64>,
    /// Stop once every partition is read up to its end as of the start (like `kcat -e`).
    #[arg(long, conflicts_with = "group")]
    exit: bool,
    /// How to print each record: %k key, %v value, %p partition, %o offset, %t timestamp
    /// (ms), %T topic, %% a percent sign; \n and \t escapes. A newline follows each record.
    /// Ignored with --output json, which prints one JSON object per line.
    #[arg(long, default_value = "%v")]
    format: String,
}

/// Renders one record with a `--format` template.
pub fn render(format: &str, record: &ConsumerRecord) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = format.chars().peekable();
    let text = |b: &Option<bytes::Bytes>| b.as_deref().unwrap_or_default().to_vec();
    while let Some(c) = chars.next() {
        match (c, chars.peek().copied()) {
            ('%', Some(spec)) if "kvpotT%".contains(spec) => {
                chars.next();
                match spec {
                    'k' => out.extend(text(&record.key)),
                    'v' => out.extend(text(&record.value)),
                    'p' => out.extend(record.partition.to_string().bytes()),
                    'o' => out.extend(record.offset.to_string().bytes()),
                    't' => out.extend(record.timestamp.to_string().bytes()),
                    'T' => out.extend(record.topic.bytes()),
                    _ => out.push(b'%'),
                }
            }
            ('\\', Some('n')) => {
                chars.next();
                out.push(b'\n');
            }
            ('\\', Some('t')) => {
                chars.next();
                out.push(b'\t');
            }
            (c, _) => {
                let mut buf = [0u8; 4];
                out.extend(c.encode_utf8(&mut buf).bytes());
            }
        }
    }
    out.push(b'\n');
    out
}

/// One record as a line of output: the `--format` template, or a JSON object.
fn line(record: &ConsumerRecord, format: &str, output: Output) -> Vec<u8> {
    match output {
        Output::Json => {
            fn text(b: &Option<bytes::Bytes>) -> Option<String> {
                b.as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            }
            let mut line = json!({
                "topic": &*record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "timestamp": record.timestamp,
                "key": text(&record.key),
                "value": text(&record.value),
            })
            .to_string()
            .into_bytes();
            line.push(b'\n');
            line
        }
        Output::Table => render(format, record),
    }
}

pub async fn consume(brokers: &[String], args: ConsumeArgs, output: Output) -> CliResult {
    if let Some(group) = args.group.clone() {
        return consume_group(brokers, &group, args, output).await;
    }
    let doing = format!("consuming {:?}", args.topic);
    let admin = Admin::new(client_config(brokers)?).map_err(CliError::client(doing.clone()))?;
    let partitions = admin
        .partition_count(&args.topic)
        .await
        .map_err(CliError::client(doing.clone()))?;
    let chosen: Vec<u32> = match args.partition {
        Some(p) if p < partitions => vec![p],
        Some(p) => {
            return Err(CliError::Client {
                doing,
                error: sluice_client::Error::UnknownPartition {
                    topic: args.topic.clone(),
                    partition: p,
                    partitions,
                },
            })
        }
        None => (0..partitions).collect(),
    };
    let mut consumer = Consumer::new(ConsumerConfig::new(client_config(brokers)?))
        .map_err(CliError::client(doing.clone()))?;
    let tps: Vec<TopicPartition> = chosen
        .iter()
        .map(|p| TopicPartition::new(args.topic.clone(), *p))
        .collect();
    consumer.assign(tps.clone());
    // The end of each partition now, for --exit: partitions already there are done.
    let mut ends: HashMap<u32, u64> = HashMap::new();
    for tp in &tps {
        let seek = match args.from {
            From::Beginning => Seek::Earliest,
            From::End => Seek::Latest,
            From::Offset(o) => Seek::Offset(o),
            From::Time(ms) => Seek::Timestamp(ms),
        };
        let position = consumer
            .seek(tp, seek)
            .await
            .map_err(CliError::client(doing.clone()))?;
        if args.exit {
            let end = admin
                .offset(tp, Seek::Latest)
                .await
                .map_err(CliError::client(doing.clone()))?
                .unwrap_or(0);
            if position < end {
                ends.insert(tp.partition, end);
            }
        }
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let done = |printed: u64, ends: &HashMap<u32, u64>| {
        args.count.is_some_and(|c| printed >= c) || (args.exit && ends.is_empty())
    };
    while !done(printed, &ends) {
        let records = consumer
            .poll(Duration::from_millis(500))
            .await
            .map_err(CliError::client(doing.clone()))?;
        for record in records {
            if done(printed, &ends) {
                break;
            }
            if args.exit && !ends.contains_key(&record.partition) {
                continue; // Past the end this partition had when we started.
            }
            let line = line(&record, &args.format, output);
            if out.write_all(&line).is_err() {
                return Ok(ExitCode::SUCCESS); // stdout closed (`| head`): a normal end.
            }
            printed += 1;
            if let Some(end) = ends.get(&record.partition) {
                if record.offset + 1 >= *end {
                    ends.remove(&record.partition);
                }
            }
        }
        if out.flush().is_err() {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

/// `consume --group`: a member of `group` until `--count` records are printed or Ctrl-C;
/// commits what it printed after each batch, and at exit commits and leaves the group
/// (`close`), so the group rebalances at once and the next member resumes after the last
/// record printed.
async fn consume_group(
    brokers: &[String],
    group: &str,
    args: ConsumeArgs,
    output: Output,
) -> CliResult {
    let doing = format!("consuming {:?} in group {group:?}", args.topic);
    let reset = match args.from {
        From::Beginning => OffsetReset::Earliest,
        From::End => OffsetReset::Latest,
        From::Offset(_) | From::Time(_) => {
            return Err(CliError::Usage(
                "with --group, reading starts at the group's committed offsets; --from takes \
                 only beginning or end (for partitions with none). Move a group's offsets with \
                 `sluice group reset-offsets`"
                    .into(),
            ))
        }
    };
    // Fail at once on an unknown topic, rather than joining a group for nothing.
    let admin = Admin::new(client_config(brokers)?).map_err(CliError::client(doing.clone()))?;
    admin
        .partition_count(&args.topic)
        .await
        .map_err(CliError::client(doing.clone()))?;
    // Commits are explicit: after what was printed, never records fetched but not shown.
    let config = ConsumerConfig::new(client_config(brokers)?)
        .auto_offset_reset(reset)
        .auto_commit(false);
    let mut consumer = Consumer::new(config).map_err(CliError::client(doing.clone()))?;
    consumer
        .subscribe(group, args.topic.as_str())
        .map_err(CliError::client(doing.clone()))?;
    let outcome = consume_group_loop(&mut consumer, &args, output, &doing).await;
    // Leave in order whatever happened: commit what was printed, then tell the coordinator.
    let committed = consumer.commit().await;
    let closed = consumer.close().await;
    outcome?;
    committed
        .and(closed)
        .map_err(CliError::client(format!("{doing}: committing at exit")))?;
    Ok(ExitCode::SUCCESS)
}

async fn consume_group_loop(
    consumer: &mut Consumer,
    args: &ConsumeArgs,
    output: Output,
    doing: &str,
) -> Result<(), CliError> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    while args.count.is_none_or(|c| printed < c) {
        let records = tokio::select! {
            polled = consumer.poll(Duration::from_millis(500)) => {
                polled.map_err(CliError::client(doing.to_string()))?
            }
            _ = &mut interrupted => break,
        };
        // Where each partition's printing stopped, when --count cut a batch short: the
        // position goes back there so the commit covers only printed records.
        let mut unprinted: HashMap<u32, u64> = HashMap::new();
        for record in &records {
            if args.count.is_some_and(|c| printed >= c) {
                unprinted.entry(record.partition).or_insert(record.offset);
                continue;
            }
            if out.write_all(&line(record, &args.format, output)).is_err() {
                return Ok(()); // stdout closed (`| head`): a normal end.
            }
            printed += 1;
        }
        if out.flush().is_err() {
            return Ok(());
        }
        for (partition, offset) in unprinted {
            let tp = TopicPartition::new(args.topic.clone(), partition);
            consumer
                .seek(&tp, Seek::Offset(offset))
                .await
                .map_err(CliError::client(doing.to_string()))?;
        }
        if !records.is_empty() {
            consumer
                .commit()
                .await
                .map_err(CliError::client(doing.to_string()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn separators_are_found_in_bytes() {
        assert_eq!(find(b"k::v", b"::"), Some(1));
        assert_eq!(find(b"\xffk:v", b":"), Some(2));
        assert_eq!(find(b"kv", b":"), None);
    }

    #[test]
    fn formats_fill_placeholders_and_from_parses() {
        let record = ConsumerRecord {
            topic: Arc::from("t"),
            partition: 2,
            offset: 7,
            timestamp: 1000,
            key: Some(bytes::Bytes::from_static(b"k1")),
            value: Some(bytes::Bytes::from_static(b"v1")),
            headers: Vec::new(),
        };
        assert_eq!(
            render("%k=%v @%p/%o %t %T 100%%", &record),
            b"k1=v1 @2/7 1000 t 100%\n"
        );
        assert_eq!(render("%x\\t%v", &record), b"%x\tv1\n");
        assert_eq!(parse_from("offset:5"), Ok(From::Offset(5)));
        assert_eq!(parse_from("time:-1").map(|_| ()), Ok(()));
        assert!(parse_from("middle").is_err());
    }
}
