//! The `report` subcommand: regenerates the markdown results page from the JSON result files
//! the scenarios write with `--json`.
//!
//! The page is a hand-written preamble (commands and explanations, kept in its own file)
//! followed by generated sections: the machine, then one table per scenario family with each
//! file's key parameters, results and ratios to the probe figures recorded in the same file.
//! Files are read as untyped [`serde_json::Value`]s, so a renamed or missing field shows as "—"
//! instead of failing; files of an unknown shape are listed with their top-level scalar fields,
//! and files that are not JSON are listed with the parse error.

use std::cmp::Ordering;
use std::fmt::{self, Write as _};
use std::io;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

/// The preamble looked for next to the results directory when none is given.
pub const DEFAULT_INTRO_FILE: &str = "benchmarks-intro.md";

const MISSING: &str = "—";

/// Why the page could not be generated. Unreadable or unexpected result files are not errors:
/// they are listed on the page.
#[derive(Debug)]
pub enum ReportError {
    /// The results directory could not be listed.
    ListResults { dir: PathBuf, source: io::Error },
    /// A result file or the preamble could not be read.
    Read { path: PathBuf, source: io::Error },
    /// The page could not be written.
    Write { path: PathBuf, source: io::Error },
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportError::ListResults { dir, source } => {
                write!(f, "list results directory {}: {source}", dir.display())
            }
            ReportError::Read { path, source } => write!(f, "read {}: {source}", path.display()),
            ReportError::Write { path, source } => write!(f, "write {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for ReportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReportError::ListResults { source, .. }
            | ReportError::Read { source, .. }
            | ReportError::Write { source, .. } => Some(source),
        }
    }
}

/// The machine generating the page, as `/proc` describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// The first `model name` in `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
    /// Logical CPUs (`processor` entries in `/proc/cpuinfo`, else the available parallelism).
    pub cores: usize,
    /// `MemTotal` from `/proc/meminfo`.
    pub memory_bytes: Option<u64>,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: Option<String>,
}

impl Host {
    /// Reads the running machine's description; missing `/proc` files leave fields empty.
    pub fn detect() -> Host {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let mut host = Host::from_proc(
            &read("/proc/cpuinfo"),
            &read("/proc/meminfo"),
            &read("/proc/sys/kernel/osrelease"),
        );
        if host.cores == 0 {
            host.cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        }
        host
    }

    /// Parses the contents of `/proc/cpuinfo`, `/proc/meminfo` and
    /// `/proc/sys/kernel/osrelease` (any may be empty).
    pub fn from_proc(cpuinfo: &str, meminfo: &str, osrelease: &str) -> Host {
        let field = |line: &str, name: &str| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_string())
        };
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| field(line, "model name"))
            .filter(|m| !m.is_empty());
        let cores = cpuinfo
            .lines()
            .filter(|line| field(line, "processor").is_some())
            .count();
        let memory_bytes = meminfo.lines().find_map(|line| {
            let value = field(line, "MemTotal")?;
            let kib = value.strip_suffix("kB").unwrap_or(&value).trim();
            kib.parse::<u64>().ok()?.checked_mul(1024)
        });
        let kernel = Some(osrelease.trim().to_string()).filter(|k| !k.is_empty());
        Host {
            cpu_model,
            cores,
            memory_bytes,
            kernel,
        }
    }
}

/// Everything one page is made from.
#[derive(Debug, Clone)]
pub struct PageInput<'a> {
    /// The directory of `*.json` result files (and optional same-named `.svg` charts).
    pub results_dir: &'a Path,
    /// The directory the page will be written to: links are made relative to it.
    pub page_dir: &'a Path,
    /// The hand-written preamble, placed first.
    pub intro: Option<&'a str>,
    /// The command that regenerates the page, quoted in its header.
    pub command: &'a str,
    /// The machine generating the page.
    pub host: &'a Host,
    /// Where the preamble lives, named in the header so readers edit it rather than the page.
    pub intro_path: Option<&'a Path>,
}

/// Reads the result files, renders the page and writes it to `out`; returns the number of
/// result files on the page.
///
/// `intro` is the hand-written preamble; when `None`, [`DEFAULT_INTRO_FILE`] in the results
/// directory's parent is used if it exists. `command` is quoted in the page's header as the way
/// to regenerate it.
pub fn generate(
    results_dir: &Path,
    out: &Path,
    intro: Option<&Path>,
    command: &str,
) -> Result<usize, ReportError> {
    let intro_path = match intro {
        Some(path) => Some(path.to_path_buf()),
        None => default_intro(results_dir),
    };
    let intro_text = intro_path
        .as_deref()
        .map(|path| {
            std::fs::read_to_string(path).map_err(|source| ReportError::Read {
                path: path.to_path_buf(),
                source,
            })
        })
        .transpose()?;
    let page_dir = match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let host = Host::detect();
    let input = PageInput {
        results_dir,
        page_dir,
        intro: intro_text.as_deref(),
        command,
        host: &host,
        intro_path: intro_path.as_deref(),
    };
    let files = read_results(results_dir)?;
    let page = render_files(&input, &files, &today_utc());
    std::fs::write(out, page).map_err(|source| ReportError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(files.len())
}

/// [`DEFAULT_INTRO_FILE`] in the parent of `results_dir`, if that file exists.
pub fn default_intro(results_dir: &Path) -> Option<PathBuf> {
    let parent = match results_dir.file_name() {
        // `docs/results` -> `docs`, `results` -> the current directory.
        Some(_) => results_dir.parent().unwrap_or(Path::new("")).to_path_buf(),
        // `.`, `..` or `/`: only the absolute path says what the parent is.
        None => std::path::absolute(results_dir)
            .ok()?
            .parent()?
            .to_path_buf(),
    };
    let path = parent.join(DEFAULT_INTRO_FILE);
    path.is_file().then_some(path)
}

/// One result file.
#[derive(Debug)]
struct ResultFile {
    /// The file name, e.g. `storage-1.json`.
    name: String,
    path: PathBuf,
    /// The same-named chart, if present.
    svg: Option<PathBuf>,
    content: Result<Value, String>,
}

impl ResultFile {
    fn stem(&self) -> &str {
        self.name.strip_suffix(".json").unwrap_or(&self.name)
    }

    fn scenario(&self) -> Option<&str> {
        self.content.as_ref().ok()?.get("scenario")?.as_str()
    }
}

fn read_results(dir: &Path) -> Result<Vec<ResultFile>, ReportError> {
    let list_error = |source| ReportError::ListResults {
        dir: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list_error)? {
        let path = entry.map_err(list_error)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.ends_with(".json") || !path.is_file() {
            continue;
        }
        let name = name.to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| ReportError::Read {
            path: path.clone(),
            source,
        })?;
        let content = serde_json::from_str::<Value>(&text).map_err(|e| e.to_string());
        let svg = Some(path.with_extension("svg")).filter(|svg| svg.is_file());
        files.push(ResultFile {
            name,
            path,
            svg,
            content,
        });
    }
    files.sort_by(|a, b| natural_cmp(a.stem(), b.stem()));
    Ok(files)
}

/// A table column: its header and how to fill a cell from a result file's JSON.
struct Column {
    header: &'static str,
    cell: fn(&Value) -> String,
}

const fn col(header: &'static str, cell: fn(&Value) -> String) -> Column {
    Column { header, cell }
}

/// A scenario family with a table of its own.
struct Family {
    scenario: &'static str,
    title: &'static str,
    note: &'static str,
    columns: &'static [Column],
}

const FAMILIES: &[Family] = &[
    Family {
        scenario: "probe",
        title: "Probe: the machine's raw limits",
        note: "O_DIRECT writes with an fdatasync per block, O_DIRECT reads of that file, one \
               loopback TCP stream. Every other scenario runs the probe again and records it.",
        columns: &[
            col("fs", |v| text(v, "/probe/fs_type")),
            col("disk MiB", |v| text(v, "/params/disk_mib")),
            col("write + fdatasync", |v| {
                mb_s(num(v, "/probe/disk_write_fdatasync_mb_s"))
            }),
            col("p99 per block", |v| {
                micros(num(v, "/probe/disk_write_fdatasync_p99_us"))
            }),
            col("read", |v| mb_s(num(v, "/probe/disk_read_mb_s"))),
            col("loopback TCP", |v| mb_s(num(v, "/probe/tcp_loopback_mb_s"))),
        ],
    },
    Family {
        scenario: "storage",
        title: "Storage: the partition log alone",
        note: "Append-to-durable latency per batch. Ratios are to the probe of the same run; \
               p99 / window is the p99 over the group-commit interval (target ≤ 2).",
        columns: &[
            col("shards × appenders × in flight", |v| {
                joined(
                    v,
                    &[
                        "/params/shards",
                        "/params/appenders_per_shard",
                        "/params/in_flight",
                    ],
                    " × ",
                )
            }),
            col("batch", |v| {
                match (
                    num(v, "/params/records_per_batch"),
                    num(v, "/params/record_bytes"),
                ) {
                    (Some(n), Some(b)) => format!("{n} × {b} B"),
                    _ => MISSING.into(),
                }
            }),
            col("window", |v| {
                match (
                    num(v, "/params/flush_interval_ms"),
                    num(v, "/params/flush_bytes"),
                ) {
                    (Some(ms), Some(b)) => format!("{ms} ms / {} KiB", b / 1024.0),
                    _ => MISSING.into(),
                }
            }),
            col("probe write", |v| {
                mb_s(num(v, "/probe/disk_write_fdatasync_mb_s"))
            }),
            col("probe read", |v| mb_s(num(v, "/probe/disk_read_mb_s"))),
            col("append", |v| mb_s(num(v, "/result/append_mb_s"))),
            col("append / probe write", |v| {
                ratio(
                    v,
                    "/result/append_mb_s",
                    "/probe/disk_write_fdatasync_mb_s",
                    "/ratios/append_vs_raw_write",
                )
            }),
            col("p50", |v| {
                micros(num(v, "/result/append_to_durable/p50_us"))
            }),
            col("p99", |v| {
                micros(num(v, "/result/append_to_durable/p99_us"))
            }),
            col("p99.9", |v| {
                micros(num(v, "/result/append_to_durable/p999_us"))
            }),
            col("max", |v| {
                micros(num(v, "/result/append_to_durable/max_us"))
            }),
            col("p99 / window", |v| {
                let window_us = num(v, "/params/flush_interval_ms").map(|ms| ms * 1000.0);
                match (num(v, "/result/append_to_durable/p99_us"), window_us) {
                    (Some(p99), Some(w)) if w > 0.0 => plain_ratio(Some(p99 / w)),
                    _ => plain_ratio(num(v, "/ratios/p99_vs_flush_interval")),
                }
            }),
            col("read", |v| mb_s(num(v, "/result/read_mb_s"))),
            col("read / probe read", |v| {
                ratio(
                    v,
                    "/result/read_mb_s",
                    "/probe/disk_read_mb_s",
                    "/ratios/read_vs_raw_read",
                )
            }),
        ],
    },
    Family {
        scenario: "metadata",
        title: "Metadata on Raft",
        note: "Commit latency is one create-topic request end to end. The metadata scenario \
               does not run the probe, so there are no ratios to it; failover is from stopping \
               the controller to a new controller committing a creation.",
        columns: &[
            col("brokers", |v| text(v, "/params/brokers")),
            col("topics × partitions", |v| {
                joined(v, &["/params/topics", "/params/partitions"], " × ")
            }),
            col("time", |v| {
                num(v, "/result/create_seconds").map_or(MISSING.into(), |s| format!("{s:.2} s"))
            }),
            col("topics/s", |v| count(num(v, "/result/topics_per_second"))),
            col("commit p50", |v| {
                micros(num(v, "/result/commit_latency/p50_us"))
            }),
            col("p99", |v| micros(num(v, "/result/commit_latency/p99_us"))),
            col("p99.9", |v| {
                micros(num(v, "/result/commit_latency/p999_us"))
            }),
            col("max", |v| micros(num(v, "/result/commit_latency/max_us"))),
            col("failover", |v| {
                num(v, "/result/failover_ms").map_or(MISSING.into(), |ms| format!("{ms:.0} ms"))
            }),
            col("failover / election timeout", |v| {
                ratio(v, "/result/failover_ms", "/params/election_timeout_ms", "")
            }),
        ],
    },
    Family {
        scenario: "hop",
        title: "Cross-shard hop",
        note: "One round trip at a time between two pinned executors set up as broker shards.",
        columns: &[
            col("batch", |v| {
                num(v, "/params/batch_bytes").map_or(MISSING.into(), |b| format!("{b} B"))
            }),
            col("round trips", |v| count(num(v, "/params/round_trips"))),
            col("p50", |v| micros(num(v, "/result/round_trip/p50_us"))),
            col("p90", |v| micros(num(v, "/result/round_trip/p90_us"))),
            col("p99", |v| micros(num(v, "/result/round_trip/p99_us"))),
            col("p99.9", |v| micros(num(v, "/result/round_trip/p999_us"))),
            col("max", |v| micros(num(v, "/result/round_trip/max_us"))),
            col("round trips/s", |v| {
                count(num(v, "/result/round_trips_per_second"))
            }),
        ],
    },
    Family {
        scenario: "produce",
        title: "Broker over TCP: produce",
        note: "Producers (and with `tail`, a consumer per partition) against a broker process. \
               Ratios are to the probe of the same run; paced runs (a `rate`) show no ratio to \
               the raw write, since their throughput is set by the pace.",
        columns: &[
            col("mode", |v| text(v, "/params/mode")),
            col("partitions", |v| text(v, "/params/partitions")),
            col("request", |v| {
                match (
                    num(v, "/params/records_per_batch"),
                    num(v, "/params/record_bytes"),
                ) {
                    (Some(n), Some(b)) => format!("{n} × {b} B"),
                    _ => MISSING.into(),
                }
            }),
            col("in flight", |v| text(v, "/params/in_flight")),
            col("rate", |v| match v.pointer("/params/rate") {
                Some(Value::Null) => "full speed".into(),
                Some(rate) => rate
                    .as_f64()
                    .map_or(MISSING.into(), |r| format!("{} records/s", count(Some(r)))),
                None => MISSING.into(),
            }),
            col("tail", |v| yes_no(v, "/params/tail_consumer")),
            col("measured", measured),
            col("probe write", |v| {
                mb_s(num(v, "/probe/disk_write_fdatasync_mb_s"))
            }),
            col("probe read", |v| mb_s(num(v, "/probe/disk_read_mb_s"))),
            col("produce", |v| mb_s(num(v, "/result/produce_mb_s"))),
            col("/ probe write", |v| match v.pointer("/params/rate") {
                Some(rate) if !rate.is_null() => MISSING.into(),
                _ => ratio(
                    v,
                    "/result/produce_mb_s",
                    "/probe/disk_write_fdatasync_mb_s",
                    "",
                ),
            }),
            col("MB/s per second (min–max)", |v| {
                series_range(v, "/result/time_series_mb_s")
            }),
            col("p50 ack", |v| {
                micros(num(v, "/result/produce_to_ack/p50_us"))
            }),
            col("p99 ack", |v| {
                micros(num(v, "/result/produce_to_ack/p99_us"))
            }),
            col("p99.9 ack", |v| {
                micros(num(v, "/result/produce_to_ack/p999_us"))
            }),
            col("p99 produce→consume", |v| {
                micros(num(v, "/result/produce_to_consume/p99_us"))
            }),
            col("read back", |v| mb_s(num(v, "/result/read_back_mb_s"))),
            col("read back / probe read", |v| {
                ratio(v, "/result/read_back_mb_s", "/probe/disk_read_mb_s", "")
            }),
            col("broker CPU", |v| seconds(num(v, "/result/broker_cpu_s"))),
            col("bench CPU", |v| seconds(num(v, "/result/bench_cpu_s"))),
            col("broker RSS start → peak", broker_rss),
        ],
    },
    Family {
        scenario: "e2e",
        title: "Client library end to end: producers and consumers",
        note: "`sluice-client` producers and consumers (the library applications use) against \
               a broker process. Latency is per record from its (intended) send time; paced \
               runs show no ratio to the raw write. `client CPU/GB` is the benchmark process's \
               CPU seconds per 10⁹ bytes produced plus consumed.",
        columns: CLIENT_COLUMNS,
    },
    Family {
        scenario: "consume",
        title: "Client library: consumers",
        note: "From the start: a prefilled topic read from offset 0 (mostly from disk); from the \
               tail: consumers keeping up with running producers.",
        columns: CLIENT_COLUMNS,
    },
    Family {
        scenario: "partitions",
        title: "Partitions: what the partition count costs",
        note: "Produce: the same bytes through the client, keyed, over one topic of each \
               partition count; the ratio is to the first count's MB/s (targets ≥ 0.7 at \
               1,000 and ≥ 0.5 at 10,000 against 4). Idle RSS: a fresh broker per count, one \
               record in each partition (target: 10,000 ≤ 2 × 10). Start-up: until every \
               partition answers. The 1-minute load average is beside each figure.",
        columns: &[
            col("produce MB/s by partitions (ratio, load)", |v| {
                array_cells(v, "/result/produce", |r| {
                    format!(
                        "{}: {} ({}, load {})",
                        count(num(r, "/partitions")),
                        mb_s(num(r, "/mb_s")),
                        plain_ratio(num(r, "/ratio_to_first")),
                        text(r, "/load_avg_1m")
                    )
                })
            }),
            col("idle RSS MB by partitions (ratio, load)", |v| {
                array_cells(v, "/result/idle", |r| {
                    format!(
                        "{}: {} ({}, load {})",
                        count(num(r, "/partitions")),
                        megabytes(num(r, "/rss_mb").unwrap_or(0.0)),
                        plain_ratio(num(r, "/ratio_to_first")),
                        text(r, "/load_avg_1m")
                    )
                })
            }),
            col(
                "broker flushes/s by partitions (probe: small writes/s)",
                |v| {
                    let flushes =
                        array_cells(v, "/result/produce", |r| match num(r, "/flushes_per_s") {
                            Some(f) => format!("{}: {f:.0}", count(num(r, "/partitions"))),
                            None => format!("{}: not measured", count(num(r, "/partitions"))),
                        });
                    match num(v, "/result/disk_small_writes_per_s") {
                        Some(p) if p > 0.0 => format!("{flushes} (probe {p:.0})"),
                        _ => flushes,
                    }
                },
            ),
            col("idle CPU, % of a core, by partitions", |v| {
                array_cells(v, "/result/idle", |r| match num(r, "/cpu_percent") {
                    Some(cpu) => format!("{}: {cpu:.1} %", count(num(r, "/partitions"))),
                    // Runs before the idle CPU was measured.
                    None => format!("{}: not measured", count(num(r, "/partitions"))),
                })
            }),
            col("start-up after clean stop (load)", |v| {
                format!(
                    "{} ({})",
                    seconds(num(v, "/result/startup_after_clean_stop_s")),
                    text(v, "/result/startup_after_clean_stop_load_avg_1m")
                )
            }),
            col("start-up after SIGKILL (load)", |v| {
                format!(
                    "{} ({})",
                    seconds(num(v, "/result/startup_after_kill_s")),
                    text(v, "/result/startup_after_kill_load_avg_1m")
                )
            }),
        ],
    },
];

/// Columns of the client scenarios (`e2e`, `consume`), which share one result shape.
const CLIENT_COLUMNS: &[Column] = &[
    col("mode", |v| text(v, "/params/mode")),
    col("partitions × producers × consumers", |v| {
        joined(
            v,
            &[
                "/params/partitions",
                "/params/producers",
                "/params/consumers",
            ],
            " × ",
        )
    }),
    col("rate", |v| match v.pointer("/params/rate") {
        Some(Value::Null) => "full speed".into(),
        Some(rate) => rate
            .as_f64()
            .map_or(MISSING.into(), |r| format!("{} records/s", count(Some(r)))),
        None => MISSING.into(),
    }),
    col("acks, batch, compression", |v| {
        match num(v, "/params/batch_bytes") {
            Some(b) => format!(
                "{}, {} KiB, {}",
                text(v, "/params/acks"),
                b / 1024.0,
                text(v, "/params/compression")
            ),
            None => MISSING.into(),
        }
    }),
    col("prefill", |v| match num(v, "/params/prefill_mib") {
        Some(m) => format!("{m} MiB"),
        None => "—".into(),
    }),
    col("probe write", |v| {
        mb_s(num(v, "/probe/disk_write_fdatasync_mb_s"))
    }),
    col("probe read", |v| mb_s(num(v, "/probe/disk_read_mb_s"))),
    col("produce", |v| mb_s(num(v, "/result/produce_mb_s"))),
    col("/ probe write", |v| {
        plain_ratio(num(v, "/ratios/produce_vs_raw_write"))
    }),
    col("consume", |v| mb_s(num(v, "/result/consume_mb_s"))),
    col("/ probe read", |v| {
        plain_ratio(num(v, "/ratios/consume_vs_raw_read"))
    }),
    col("p50 / p99 / p99.9 / max ack", |v| {
        latency_row(v, "/result/produce_to_ack")
    }),
    col("p50 / p99 / p99.9 / max produce→consume", |v| {
        latency_row(v, "/result/produce_to_consume")
    }),
    col("acked = consumed, duplicates", |v| {
        format!(
            "{} = {}, {}",
            text(v, "/result/total_acked"),
            text(v, "/result/total_consumed"),
            text(v, "/result/duplicates")
        )
    }),
    col("broker CPU", |v| seconds(num(v, "/result/broker_cpu_s"))),
    col("client CPU/GB", |v| {
        seconds(num(v, "/result/client_cpu_s_per_gb"))
    }),
    col("broker RSS start → peak", broker_rss),
];

/// The broker's resident set at the start and at its peak.
fn broker_rss(v: &Value) -> String {
    match (
        num(v, "/result/broker_rss_start_mb"),
        num(v, "/result/broker_rss_peak_mb"),
    ) {
        (Some(a), Some(b)) => format!("{a:.0} → {b:.0} MB"),
        _ => MISSING.into(),
    }
}

/// `p50 / p99 / p99.9 / max` of a latency summary, or a dash when it is null.
fn latency_row(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::Object(_)) => format!(
            "{} / {} / {} / {}",
            micros(num(v, &format!("{pointer}/p50_us"))),
            micros(num(v, &format!("{pointer}/p99_us"))),
            micros(num(v, &format!("{pointer}/p999_us"))),
            micros(num(v, &format!("{pointer}/max_us")))
        ),
        _ => "—".into(),
    }
}

fn render_files(input: &PageInput<'_>, files: &[ResultFile], date: &str) -> String {
    let mut page = String::new();
    let intro_hint = input
        .intro_path
        .map(|p| format!("; edit the preamble in {} instead", p.display()))
        .unwrap_or_default();
    let _ = writeln!(
        page,
        "<!-- Generated by `{}`: do not edit by hand{intro_hint}. -->\n",
        input.command.replace("-->", "- ->")
    );
    match input.intro {
        Some(intro) if !intro.trim().is_empty() => {
            page.push_str(intro.trim_end());
            page.push_str("\n\n");
        }
        _ => page.push_str("# Benchmark results\n\n"),
    }

    let _ = writeln!(page, "## Results\n");
    let _ = writeln!(
        page,
        "*This section is generated by `{}` from the {} JSON file(s) in `{}`{}; do not edit it \
         by hand.*\n",
        input.command,
        files.len(),
        link_target(input.page_dir, input.results_dir),
        input
            .intro_path
            .map(|p| format!(" (the text above comes from `{}`)", p.display()))
            .unwrap_or_default(),
    );
    render_machine(&mut page, input.host, files, date);

    for family in FAMILIES {
        let members: Vec<&ResultFile> = files
            .iter()
            .filter(|f| f.scenario() == Some(family.scenario))
            .collect();
        if !members.is_empty() {
            render_family(&mut page, input.page_dir, family, &members);
        }
    }

    let known = |f: &&ResultFile| {
        f.scenario()
            .is_some_and(|s| FAMILIES.iter().any(|family| family.scenario == s))
    };
    let others: Vec<&ResultFile> = files
        .iter()
        .filter(|f| f.content.is_ok() && !known(f))
        .collect();
    if !others.is_empty() {
        let _ = writeln!(page, "### Other results\n");
        let _ = writeln!(
            page,
            "Files of a scenario this page has no table for, with their top-level fields.\n"
        );
        for file in others {
            let fields = match &file.content {
                Ok(Value::Object(map)) => {
                    let scalars: Vec<String> = map
                        .iter()
                        .filter(|(_, v)| !v.is_object() && !v.is_array())
                        .map(|(k, v)| format!("`{}` = {}", inline_code(k), scalar(v)))
                        .collect();
                    if scalars.is_empty() {
                        "no top-level scalar fields".to_string()
                    } else {
                        scalars.join(", ")
                    }
                }
                Ok(Value::Array(items)) => format!("an array of {} element(s)", items.len()),
                Ok(other) => format!("the value {}", scalar(other)),
                Err(_) => continue,
            };
            let _ = writeln!(page, "- {}: {fields}", file_link(input.page_dir, file));
        }
        page.push('\n');
        render_charts(
            &mut page,
            input.page_dir,
            files.iter().filter(|f| f.content.is_ok() && !known(f)),
        );
    }

    let unreadable: Vec<&ResultFile> = files.iter().filter(|f| f.content.is_err()).collect();
    if !unreadable.is_empty() {
        let _ = writeln!(page, "### Unreadable files\n");
        for file in unreadable {
            if let Err(error) = &file.content {
                let _ = writeln!(
                    page,
                    "- {}: not JSON ({})",
                    file_link(input.page_dir, file),
                    cell_text(error)
                );
            }
        }
        page.push('\n');
    }
    while page.ends_with("\n\n") {
        page.pop();
    }
    page
}

fn render_machine(page: &mut String, host: &Host, files: &[ResultFile], date: &str) {
    let _ = writeln!(page, "### Machine\n");
    // Whether any result file was recorded on a machine with this kernel release.
    let recorded_kernels: Vec<&str> = files
        .iter()
        .filter_map(|f| {
            f.content
                .as_ref()
                .ok()?
                .pointer("/machine/kernel")?
                .as_str()
        })
        .collect();
    let elsewhere = !recorded_kernels.is_empty()
        && !recorded_kernels
            .iter()
            .any(|k| Some(*k) == host.kernel.as_deref());
    let whose = if elsewhere {
        "which is not the one that ran the benchmarks: no result file records its kernel (see \
         the machines recorded below)"
    } else {
        "which is normally the one that ran the benchmarks"
    };
    let _ = writeln!(
        page,
        "The machine that generated this page ({date}, from `/proc`), {whose}:\n"
    );
    let cpu = host.cpu_model.as_deref().unwrap_or("unknown CPU");
    let _ = writeln!(
        page,
        "- CPU: {}, {} logical core(s)",
        cell_text(cpu),
        host.cores
    );
    let memory = host.memory_bytes.map_or("unknown".to_string(), |b| {
        format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30))
    });
    let _ = writeln!(page, "- memory: {memory}");
    let _ = writeln!(
        page,
        "- kernel: {}\n",
        host.kernel.as_deref().map_or("unknown".into(), cell_text)
    );

    // Distinct `machine` records in the result files, with the files that hold each.
    let mut machines: Vec<(String, Vec<&str>)> = Vec::new();
    for file in files {
        let Some(machine) = file.content.as_ref().ok().and_then(|v| v.get("machine")) else {
            continue;
        };
        let description = match machine {
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| format!("{} {}", cell_text(k), scalar(v)))
                .collect::<Vec<_>>()
                .join(", "),
            other => scalar(other),
        };
        match machines.iter_mut().find(|(d, _)| *d == description) {
            Some((_, names)) => names.push(file.stem()),
            None => machines.push((description, vec![file.stem()])),
        }
    }
    if !machines.is_empty() {
        let _ = writeln!(page, "As recorded in the result files:\n");
        let _ = writeln!(page, "| machine | files |\n| --- | --- |");
        for (description, names) in machines {
            let _ = writeln!(page, "| {description} | {} |", names.join(", "));
        }
        page.push('\n');
    }
}

fn render_family(page: &mut String, page_dir: &Path, family: &Family, members: &[&ResultFile]) {
    let _ = writeln!(page, "### {} (`{}`)\n", family.title, family.scenario);
    let _ = writeln!(page, "{}\n", family.note);
    let mut header = String::from("| file | rev |");
    let mut rule = String::from("| --- | --- |");
    for column in family.columns {
        let _ = write!(header, " {} |", column.header);
        rule.push_str(" --- |");
    }
    let _ = writeln!(page, "{header}\n{rule}");
    for file in members {
        let Ok(value) = &file.content else { continue };
        let rev = match value.get("git_revision").and_then(Value::as_str) {
            Some(rev) => format!("`{}`", inline_code(rev)),
            None => MISSING.into(),
        };
        let mut row = format!("| {} | {rev} |", file_link(page_dir, file));
        for column in family.columns {
            let _ = write!(row, " {} |", (column.cell)(value));
        }
        let _ = writeln!(page, "{row}");
    }
    page.push('\n');
    render_charts(page, page_dir, members.iter().copied());
}

fn render_charts<'a>(
    page: &mut String,
    page_dir: &Path,
    files: impl Iterator<Item = &'a ResultFile>,
) {
    for file in files {
        if let Some(svg) = &file.svg {
            let _ = writeln!(
                page,
                "![{}]({})\n",
                cell_text(file.stem()),
                link_target(page_dir, svg)
            );
        }
    }
}

fn file_link(page_dir: &Path, file: &ResultFile) -> String {
    format!(
        "[{}]({})",
        cell_text(file.stem()),
        link_target(page_dir, &file.path)
    )
}

/// A markdown link target for `target` as seen from `page_dir`.
fn link_target(page_dir: &Path, target: &Path) -> String {
    let relative = relative_path(page_dir, target);
    let text = relative.to_string_lossy().replace('\\', "/");
    if text.contains([' ', '(', ')', '<', '>']) {
        format!("<{}>", text.replace(['<', '>'], ""))
    } else {
        text
    }
}

/// A path's components with `.` dropped and `..` applied lexically.
fn normal_components(p: &Path) -> Vec<Component<'_>> {
    let mut parts: Vec<Component<'_>> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(parts.last(), Some(Component::Normal(_))) => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts
}

/// `target` relative to the directory `from` (both made absolute first, without resolving
/// symbolic links); `target` unchanged if either cannot be made absolute.
fn relative_path(from: &Path, target: &Path) -> PathBuf {
    let (Ok(from), Ok(to)) = (std::path::absolute(from), std::path::absolute(target)) else {
        return target.to_path_buf();
    };
    let (from, to) = (normal_components(&from), normal_components(&to));
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut relative = PathBuf::new();
    for _ in common..from.len() {
        relative.push("..");
    }
    for part in &to[common..] {
        relative.push(part.as_os_str());
    }
    if relative.as_os_str().is_empty() {
        relative.push(".");
    }
    relative
}

/// One line per element of the array at `pointer`, formatted by `cell`.
fn array_cells(v: &Value, pointer: &str, cell: impl Fn(&Value) -> String) -> String {
    match v.pointer(pointer).and_then(Value::as_array) {
        Some(items) if !items.is_empty() => items.iter().map(cell).collect::<Vec<_>>().join("<br>"),
        _ => "–".into(),
    }
}

fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer)?.as_f64().filter(|x| x.is_finite())
}

fn text(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        None | Some(Value::Null) => MISSING.into(),
        Some(Value::String(s)) => cell_text(s),
        Some(other) => scalar(other),
    }
}

fn joined(v: &Value, pointers: &[&str], separator: &str) -> String {
    let parts: Option<Vec<String>> = pointers
        .iter()
        .map(|p| v.pointer(p).filter(|x| !x.is_null()).map(scalar))
        .collect();
    parts.map_or(MISSING.into(), |parts| parts.join(separator))
}

fn yes_no(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer).and_then(Value::as_bool) {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => MISSING.into(),
    }
}

/// `numerator / denominator` in bold, or the value at `fallback` (if not empty) when either
/// figure is missing.
fn ratio(v: &Value, numerator: &str, denominator: &str, fallback: &str) -> String {
    let computed = match (num(v, numerator), num(v, denominator)) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ if !fallback.is_empty() => num(v, fallback),
        _ => None,
    };
    match computed.filter(|r| r.is_finite()) {
        Some(r) => format!("**{r:.2}**"),
        None => MISSING.into(),
    }
}

fn plain_ratio(r: Option<f64>) -> String {
    r.filter(|r| r.is_finite())
        .map_or(MISSING.into(), |r| format!("{r:.2}"))
}

fn mb_s(x: Option<f64>) -> String {
    x.map_or(MISSING.into(), |x| format!("{} MB/s", megabytes(x)))
}

/// A rate in MB/s with three significant figures below 100, whole numbers above.
fn megabytes(x: f64) -> String {
    match x.abs() {
        a if a >= 100.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        _ => format!("{x:.2}"),
    }
}

fn seconds(x: Option<f64>) -> String {
    x.map_or(MISSING.into(), |x| format!("{x:.1} s"))
}

/// A latency given in µs, in the unit and precision the hand-written tables used.
fn micros(us: Option<f64>) -> String {
    match us {
        None => MISSING.into(),
        Some(us) if us < 1000.0 => format!("{us:.0} µs"),
        Some(us) if us < 10_000.0 => format!("{:.2} ms", us / 1000.0),
        Some(us) if us < 100_000.0 => format!("{:.1} ms", us / 1000.0),
        Some(us) => format!("{:.0} ms", us / 1000.0),
    }
}

/// A whole number with thousands separators.
fn count(x: Option<f64>) -> String {
    let Some(x) = x else { return MISSING.into() };
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x.round() < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// How long a produce run's measured phase was meant to be: `--messages` records or
/// `--duration` seconds (files from before `--messages` have only a `duration_s`).
fn measured(v: &Value) -> String {
    match (num(v, "/params/messages"), num(v, "/params/duration_s")) {
        (Some(records), _) => format!("{} records", count(Some(records))),
        (None, Some(seconds)) => format!("{seconds} s"),
        (None, None) => MISSING.into(),
    }
}

fn series_range(v: &Value, pointer: &str) -> String {
    let Some(Value::Array(items)) = v.pointer(pointer) else {
        return MISSING.into();
    };
    let values: Vec<f64> = items
        .iter()
        .filter_map(Value::as_f64)
        .filter(|x| x.is_finite())
        .collect();
    let min = values.iter().copied().reduce(f64::min);
    let max = values.iter().copied().reduce(f64::max);
    match (min, max) {
        (Some(min), Some(max)) => format!("{}–{}", megabytes(min), megabytes(max)),
        _ => MISSING.into(),
    }
}

/// A JSON scalar for a table cell or list item (containers are summarised).
fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => cell_text(s),
        Value::Array(a) => format!("[{} items]", a.len()),
        Value::Object(o) => format!("{{{} fields}}", o.len()),
    }
}

/// Text made safe for a markdown table cell: one line, pipes and markup escaped.
fn cell_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            '|' | '\\' | '*' | '_' | '`' | '[' | ']' | '<' | '>' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Text made safe inside single backticks in a table cell.
fn inline_code(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .map(|c| match c {
            '`' => '\'',
            '|' => '¦',
            c => c,
        })
        .collect()
}

/// Compares names so that embedded numbers sort by value: `storage-2` before `storage-10`.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a, b);
    loop {
        match (x.chars().next(), y.chars().next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let end = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
                let (m, n) = (end(x), end(y));
                let (p, q) = (
                    x[..m].trim_start_matches('0'),
                    y[..n].trim_start_matches('0'),
                );
                let order = p.len().cmp(&q.len()).then_with(|| p.cmp(q));
                if order != Ordering::Equal {
                    return order;
                }
                (x, y) = (&x[m..], &y[n..]);
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(&d);
                }
                (x, y) = (&x[c.len_utf8()..], &y[d.len_utf8()..]);
            }
        }
    }
}

/// Today's date in UTC, `YYYY-MM-DD`.
fn today_utc() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    civil_date(seconds / 86_400)
}

/// The proleptic Gregorian date of a day number since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            cpu_model: Some("Test CPU".into()),
            cores: 2,
            memory_bytes: Some(24 << 30),
            kernel: Some("6.1.0".into()),
        }
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const STORAGE: &str = r#"{
        "scenario": "storage", "git_revision": "8f56643",
        "machine": {"cpus": 2, "kernel": "6.1.0"},
        "params": {"shards": 2, "appenders_per_shard": 16, "in_flight": 12, "record_bytes": 1024,
                   "records_per_batch": 16, "flush_interval_ms": 5, "flush_bytes": 1048576},
        "probe": {"disk_write_fdatasync_mb_s": 2000.0, "disk_read_mb_s": 1000.0,
                  "disk_write_fdatasync_p99_us": 900, "tcp_loopback_mb_s": 4000.0, "fs_type": "ext4"},
        "result": {"append_mb_s": 1800.0, "read_mb_s": 2000.0,
                   "append_to_durable": {"p50_us": 3201, "p99_us": 7500, "p999_us": 11167, "max_us": 22575}}
    }"#;

    const PRODUCE: &str = r#"{
        "scenario": "produce", "git_revision": "0e193c8",
        "machine": {"cpus": 2, "kernel": "6.1.0"},
        "params": {"mode": "latency", "partitions": 4, "record_bytes": 1024, "records_per_batch": 1,
                   "in_flight": 8, "rate": 5000, "tail_consumer": true},
        "probe": {"disk_write_fdatasync_mb_s": 1600.0, "disk_read_mb_s": 1400.0},
        "result": {"produce_mb_s": 5.1, "produce_to_ack": {"p50_us": 1481, "p99_us": 2859},
                   "produce_to_consume": null, "read_back_mb_s": null,
                   "time_series_mb_s": [5.1, 5.2, 4.9]}
    }"#;

    fn render_dir(dir: &Path, intro: Option<&str>) -> String {
        let files = read_results(dir).unwrap();
        let input = PageInput {
            results_dir: dir,
            page_dir: dir.parent().unwrap(),
            intro,
            command: "sluice-bench report --results R --out O",
            host: &host(),
            intro_path: None,
        };
        render_files(&input, &files, "2026-01-02")
    }

    fn table_rows<'a>(page: &'a str, section: &str) -> Vec<&'a str> {
        let start = page.find(section).unwrap_or_else(|| panic!("no {section}"));
        page[start..]
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .collect()
    }

    #[test]
    fn renders_known_families_with_ratios_to_the_probe() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("results");
        std::fs::create_dir(&dir).unwrap();
        write(&dir, "storage-2.json", STORAGE);
        write(
            &dir,
            "storage-10.json",
            &STORAGE.replace("1800.0", "1500.0"),
        );
        write(&dir, "produce-latency.json", PRODUCE);
        write(&dir, "storage-2.svg", "<svg></svg>");
        write(&dir, "notes.txt", "ignored");
        write(
            &dir,
            "probe.json",
            r#"{"scenario": "probe", "params": {"disk_mib": 512}, "probe": {"fs_type": "xfs",
                "disk_write_fdatasync_mb_s": 1500.4, "disk_read_mb_s": 9.5}, "result": null}"#,
        );

        let page = render_dir(&dir, Some("# Benchmarks\n\nHand-written prose.\n"));
        assert!(page.starts_with(
            "<!-- Generated by `sluice-bench report --results R --out O`: do not edit"
        ));
        assert!(page.contains("# Benchmarks\n\nHand-written prose.\n\n## Results\n"));
        assert!(page.contains("generated by `sluice-bench report --results R --out O` from the 4 JSON file(s) in `results`"));
        assert!(page.contains("- CPU: Test CPU, 2 logical core(s)"));
        assert!(page.contains("- memory: 24.0 GiB"));
        assert!(page.contains("| cpus 2, kernel 6.1.0 | produce-latency, storage-2, storage-10 |"));
        assert!(page.contains("which is normally the one that ran the benchmarks"));
        // Files recorded elsewhere: the page says this machine did not run them.
        let mut other = host();
        other.kernel = Some("6.2.0".into());
        let files = read_results(&dir).unwrap();
        let input = PageInput {
            results_dir: &dir,
            page_dir: root.path(),
            intro: None,
            command: "c",
            host: &other,
            intro_path: None,
        };
        let elsewhere = render_files(&input, &files, "2026-01-02");
        assert!(elsewhere.contains("which is not the one that ran the benchmarks"));

        let storage = table_rows(&page, "### Storage");
        assert_eq!(storage.len(), 4, "{storage:?}");
        assert!(storage[0].starts_with("| file | rev | shards × appenders × in flight |"));
        // Natural order, ratios computed from the probe in the same file.
        assert!(storage[2].starts_with("| [storage-2](results/storage-2.json) | `8f56643` | 2 × 16 × 12 | 16 × 1024 B | 5 ms / 1024 KiB |"), "{}", storage[2]);
        assert!(storage[2].contains("| 1800 MB/s | **0.90** | 3.20 ms | 7.50 ms | 11.2 ms | 22.6 ms | 1.50 | 2000 MB/s | **2.00** |"), "{}", storage[2]);
        assert!(storage[3].starts_with("| [storage-10]"));
        assert!(storage[3].contains("| **0.75** |"));
        assert!(page.contains("![storage-2](results/storage-2.svg)"));
        assert!(!page.contains("storage-10.svg"));

        let produce = table_rows(&page, "### Broker over TCP");
        assert_eq!(produce.len(), 3);
        assert!(
            produce[2].contains("| latency | 4 | 1 × 1024 B | 8 | 5,000 records/s | yes |"),
            "{}",
            produce[2]
        );
        // Paced: no ratio to the raw write; missing figures are dashes.
        assert!(
            produce[2]
                .contains("| 5.10 MB/s | — | 4.90–5.20 | 1.48 ms | 2.86 ms | — | — | — | — |"),
            "{}",
            produce[2]
        );
        let probe = table_rows(&page, "### Probe");
        assert_eq!(
            probe[2],
            "| [probe](results/probe.json) | — | xfs | 512 | 1500 MB/s | — | 9.50 MB/s | — |"
        );
        assert!(page.find("### Probe") < page.find("### Storage"));
        assert!(!page.contains("### Metadata"));
        assert!(!page.contains("### Other results"));
        assert!(!page.contains("notes"));
    }

    #[test]
    fn produce_files_old_and_new_give_the_measured_phase() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("results");
        std::fs::create_dir(&dir).unwrap();
        // Before `--messages` and `--seed`: a number of seconds, no seed, no ratios.
        write(
            &dir,
            "produce-1.json",
            &PRODUCE.replace(
                r#""mode": "latency""#,
                r#""mode": "latency", "duration_s": 8.0"#,
            ),
        );
        // Bounded by records: `duration_s` is null.
        write(
            &dir,
            "produce-2.json",
            &PRODUCE.replace(
                r#""mode": "latency""#,
                r#""mode": "latency", "duration_s": null, "messages": 2000000, "seed": 7"#,
            ),
        );
        let page = render_dir(&dir, None);
        let rows = table_rows(&page, "### Broker over TCP");
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert!(
            rows[0].contains("| tail | measured | probe write |"),
            "{}",
            rows[0]
        );
        assert!(rows[2].contains("| yes | 8 s | 1600 MB/s |"), "{}", rows[2]);
        assert!(
            rows[3].contains("| yes | 2,000,000 records | 1600 MB/s |"),
            "{}",
            rows[3]
        );
        // Neither: a dash.
        assert_eq!(measured(&serde_json::json!({"params": {}})), MISSING);
    }

    #[test]
    fn unknown_shapes_and_broken_files_are_listed_not_fatal() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("results");
        std::fs::create_dir(&dir).unwrap();
        write(
            &dir,
            "future.json",
            r#"{"scenario": "replicate", "git_revision": "abc", "lag_ms": 1.5, "nested": {"a": 1}, "note": "a | b"}"#,
        );
        write(&dir, "list.json", "[1, 2, 3]");
        write(&dir, "bare.json", "42");
        write(&dir, "broken.json", "{ not json");
        write(
            &dir,
            "hop-1.json",
            r#"{"scenario": "hop", "params": "drifted", "result": {"round_trip": {"p50_us": 75}}}"#,
        );

        let page = render_dir(&dir, None);
        assert!(page.contains("\n# Benchmark results\n"));
        let future = page
            .lines()
            .find(|l| l.starts_with("- [future](results/future.json): "))
            .unwrap();
        for field in [
            "`scenario` = replicate",
            "`git_revision` = abc",
            "`lag_ms` = 1.5",
            "`note` = a \\| b",
        ] {
            assert!(future.contains(field), "{future}");
        }
        assert!(!future.contains("nested"));
        assert!(page.contains("- [list](results/list.json): an array of 3 element(s)"));
        assert!(page.contains("- [bare](results/bare.json): the value 42"));
        assert!(
            page.contains("### Unreadable files\n\n- [broken](results/broken.json): not JSON (")
        );
        let hop = table_rows(&page, "### Cross-shard hop");
        assert_eq!(hop.len(), 3);
        assert!(
            hop[2].starts_with("| [hop-1](results/hop-1.json) | — | — | — | 75 µs | — |"),
            "{}",
            hop[2]
        );
        assert!(!page.contains("As recorded in the result files"));
        assert!(page.contains("which is normally the one that ran the benchmarks"));
    }

    #[test]
    fn an_empty_directory_gives_a_page_and_a_missing_one_an_error() {
        let root = tempfile::tempdir().unwrap();
        let page = render_dir(root.path(), None);
        assert!(page.contains("from the 0 JSON file(s)"));
        assert!(page.contains("### Machine"));
        let missing = root.path().join("nope");
        assert!(matches!(
            read_results(&missing),
            Err(ReportError::ListResults { .. })
        ));
    }

    #[test]
    fn generate_writes_the_page_with_the_default_preamble() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("results");
        std::fs::create_dir(&dir).unwrap();
        write(&dir, "storage-1.json", STORAGE);
        write(root.path(), DEFAULT_INTRO_FILE, "# Intro\n\nKept.\n");
        let out = root.path().join("benchmarks.md");
        let n = generate(&dir, &out, None, "sluice-bench report").unwrap();
        assert_eq!(n, 1);
        let page = std::fs::read_to_string(&out).unwrap();
        assert!(page.contains("# Intro\n\nKept.\n\n## Results"));
        assert!(page.contains("[storage-1](results/storage-1.json)"));
        assert!(page.ends_with("|\n"), "{page}");

        let missing_intro = root.path().join("missing.md");
        let error = generate(&dir, &out, Some(&missing_intro), "x").unwrap_err();
        assert!(matches!(error, ReportError::Read { .. }));
        assert!(error.to_string().contains("missing.md"));
    }

    #[test]
    fn files_are_ordered_by_name_with_numbers_by_value() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b-10", "b-2", "a-notail", "a", "a-5000"] {
            write(dir.path(), &format!("{name}.json"), "{}");
        }
        let files = read_results(dir.path()).unwrap();
        let names: Vec<&str> = files.iter().map(ResultFile::stem).collect();
        assert_eq!(names, ["a", "a-5000", "a-notail", "b-2", "b-10"]);
    }

    #[test]
    fn host_is_parsed_from_proc() {
        let cpuinfo =
            "processor\t: 0\nmodel name\t: AMD EPYC\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n";
        let meminfo = "MemTotal:       24684084 kB\nMemFree: 1 kB\n";
        let host = Host::from_proc(cpuinfo, meminfo, "6.18.44\n");
        assert_eq!(
            host,
            Host {
                cpu_model: Some("AMD EPYC".into()),
                cores: 2,
                memory_bytes: Some(24_684_084 * 1024),
                kernel: Some("6.18.44".into()),
            }
        );
        assert_eq!(Host::from_proc("", "", ""), Host::default());
    }

    #[test]
    fn helpers() {
        assert_eq!(
            natural_cmp("storage-2.json", "storage-10.json"),
            Ordering::Less
        );
        assert_eq!(natural_cmp("a10b", "a10c"), Ordering::Less);
        assert_eq!(natural_cmp("a01", "a1"), Ordering::Less);
        assert_eq!(natural_cmp("hop", "hop-1"), Ordering::Less);
        assert_eq!(count(Some(1_082_484.44)), "1,082,484");
        assert_eq!(count(Some(686.0)), "686");
        assert_eq!(micros(Some(75.0)), "75 µs");
        assert_eq!(micros(Some(116_927.0)), "117 ms");
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(20_454), "2026-01-01");
        assert_eq!(
            relative_path(
                Path::new("/a/b/docs"),
                Path::new("/a/b/docs/results/x.json")
            ),
            PathBuf::from("results/x.json")
        );
        assert_eq!(
            relative_path(Path::new("/tmp"), Path::new("/work/docs/x.json")),
            PathBuf::from("../work/docs/x.json")
        );
        assert_eq!(
            link_target(Path::new("/a"), Path::new("/a/my file.json")),
            "<my file.json>"
        );
        assert_eq!(cell_text("a|b\nc"), "a\\|b c");
    }
}
