//! The JSON result file every scenario writes with `--json`: one shape for all of them, built
//! here so that `docs/bench.md`, which documents it key by key, is checked against it by this
//! module's tests.
//!
//! Every file has the same top-level keys; `probe` and `ratios` are null for scenarios that are
//! not held against the machine's raw limits, and `result` is null for the probe alone.

use std::path::Path;

use serde::Serialize;

use crate::e2e::{ClientParams, ClientResult};
use crate::group::{GroupParams, GroupResult};
use crate::hop::{HopParams, HopResult};
use crate::kafka::{KafkaParams, KafkaResult};
use crate::metadata::{MetadataParams, MetadataResult};
use crate::modes::{ModesParams, ModesRatios, ModesResult};
use crate::network::{NetworkParams, NetworkResult};
use crate::partitions::{PartitionsParams, PartitionsResult};
use crate::probe::ProbeResult;
use crate::replication::{CatchupParams, CatchupResult, FailoverParams, FailoverResult};
use crate::scrape::{ScrapeParams, ScrapeResult};
use crate::storage::{StorageParams, StorageResult};

/// One result file.
#[derive(Debug, Serialize)]
pub struct Report<P, R, Q> {
    /// The subcommand that ran.
    pub scenario: &'static str,
    pub git_revision: String,
    pub machine: Machine,
    pub params: P,
    /// The machine's raw limits, measured in the same run.
    pub probe: Option<ProbeResult>,
    pub result: R,
    /// The result over the probe's figures.
    pub ratios: Option<Q>,
}

impl<P: Serialize, R: Serialize, Q: Serialize> Report<P, R, Q> {
    fn new(
        scenario: &'static str,
        params: P,
        probe: Option<ProbeResult>,
        result: R,
        ratios: Option<Q>,
    ) -> Self {
        Report {
            scenario,
            git_revision: git_revision(),
            machine: machine(),
            params,
            probe,
            result,
            ratios,
        }
    }

    /// Writes the report as pretty JSON to `path`, if there is one.
    pub fn write(&self, path: Option<&Path>) -> Result<(), String> {
        if let Some(path) = path {
            let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
            std::fs::write(path, text + "\n")
                .map_err(|e| format!("write {}: {e}", path.display()))?;
            println!("report written to {}", path.display());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    pub cpu_model: Option<String>,
    pub memory_mib: Option<u64>,
    /// `/proc/loadavg`'s 1, 5 and 15 minute averages when the result was written (the machine
    /// is shared: latency figures depend on it).
    pub load_average: Option<[f64; 3]>,
}

fn machine() -> Machine {
    let host = crate::report::Host::detect();
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: host.kernel.unwrap_or_default(),
        cpu_model: host.cpu_model,
        memory_mib: host.memory_bytes.map(|bytes| bytes >> 20),
        load_average: load_average(),
    }
}

fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// The short hash of the commit checked out where this benchmark was built (not the working
/// directory, which may be anywhere), or "unknown" outside a git checkout.
pub fn git_revision() -> String {
    std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// `numerator / denominator`, or `None` when the denominator is not positive.
fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator > 0.0)
        .then(|| numerator / denominator)
        .filter(|r| r.is_finite())
}

/// The `failover` scenario: not held against the probe.
pub fn failover(
    params: FailoverParams,
    result: FailoverResult,
) -> Report<FailoverParams, FailoverResult, ()> {
    Report::new("failover", params, None, result, None)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CatchupRatios {
    pub catch_up_vs_raw_read: Option<f64>,
}

/// The `catchup` scenario: the catch-up rate over the raw read probe.
pub fn catchup(
    params: CatchupParams,
    probe: ProbeResult,
    result: CatchupResult,
) -> Report<CatchupParams, CatchupResult, CatchupRatios> {
    let ratios = CatchupRatios {
        catch_up_vs_raw_read: ratio(result.catch_up_mb_s, probe.disk_read_mb_s),
    };
    Report::new("catchup", params, Some(probe), result, Some(ratios))
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeParams {
    pub disk_mib: u64,
}

/// The `probe` scenario: the raw limits alone.
pub fn probe(params: ProbeParams, probe: ProbeResult) -> Report<ProbeParams, (), ()> {
    Report::new("probe", params, Some(probe), (), None)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StorageRatios {
    pub append_vs_raw_write: Option<f64>,
    pub read_vs_raw_read: Option<f64>,
    pub p99_vs_flush_interval: Option<f64>,
}

pub fn storage(
    params: StorageParams,
    probe: ProbeResult,
    result: StorageResult,
) -> Report<StorageParams, StorageResult, StorageRatios> {
    let ratios = StorageRatios {
        append_vs_raw_write: ratio(result.append_mb_s, probe.disk_write_fdatasync_mb_s),
        read_vs_raw_read: ratio(result.read_mb_s, probe.disk_read_mb_s),
        p99_vs_flush_interval: ratio(
            result.append_to_durable.p99_us as f64,
            params.flush_interval_ms as f64 * 1000.0,
        ),
    };
    Report::new("storage", params, Some(probe), result, Some(ratios))
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProduceRatios {
    /// Null for paced runs, whose throughput is the pace.
    pub produce_vs_raw_write: Option<f64>,
    /// Null without a read-back.
    pub read_back_vs_raw_read: Option<f64>,
}

pub fn produce(
    params: NetworkParams,
    probe: ProbeResult,
    result: NetworkResult,
) -> Report<NetworkParams, NetworkResult, ProduceRatios> {
    let ratios = ProduceRatios {
        produce_vs_raw_write: ratio(result.produce_mb_s, probe.disk_write_fdatasync_mb_s)
            .filter(|_| params.rate.is_none()),
        read_back_vs_raw_read: result
            .read_back_mb_s
            .and_then(|read| ratio(read, probe.disk_read_mb_s)),
    };
    Report::new("produce", params, Some(probe), result, Some(ratios))
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientRatios {
    /// Null for paced runs and for `consume` from the start.
    pub produce_vs_raw_write: Option<f64>,
    /// Null without consumers.
    pub consume_vs_raw_read: Option<f64>,
    /// The broker's own produce p99 minus the probe's durable 4 KiB write p99, in µs (issue
    /// 16's target in latency mode: at most 250). Null when the broker's figure is missing.
    pub broker_produce_p99_minus_dsync_4k_p99_us: Option<i64>,
    /// The same against the probe's p99 from each write's due time (paced runs): the device's
    /// stalls counted as a paced producer meets them. Null when either figure is missing.
    pub broker_produce_p99_minus_dsync_4k_open_loop_p99_us: Option<i64>,
}

fn client_ratios(
    params: &ClientParams,
    probe: &ProbeResult,
    result: &ClientResult,
) -> ClientRatios {
    ClientRatios {
        produce_vs_raw_write: ratio(result.produce_mb_s, probe.disk_write_fdatasync_mb_s)
            .filter(|_| params.rate.is_none() && params.prefill_mib.is_none()),
        consume_vs_raw_read: ratio(result.consume_mb_s, probe.disk_read_mb_s)
            .filter(|_| params.consumers > 0),
        broker_produce_p99_minus_dsync_4k_p99_us: result
            .broker_produce
            .as_ref()
            .filter(|l| l.count > 0 && probe.disk_dsync_4k_writes > 0)
            .map(|l| l.p99_us as i64 - probe.disk_dsync_4k_p99_us as i64),
        broker_produce_p99_minus_dsync_4k_open_loop_p99_us: result
            .broker_produce
            .as_ref()
            .filter(|l| l.count > 0)
            .zip(probe.disk_dsync_4k_open_loop_p99_us)
            .map(|(l, open_loop)| l.p99_us as i64 - open_loop as i64),
    }
}

/// The `e2e` scenario: client producers and consumers together.
pub fn e2e(
    params: ClientParams,
    probe: ProbeResult,
    result: ClientResult,
) -> Report<ClientParams, ClientResult, ClientRatios> {
    let ratios = client_ratios(&params, &probe, &result);
    Report::new("e2e", params, Some(probe), result, Some(ratios))
}

/// The `consume` scenario: client consumers from the start or at the tail.
pub fn consume(
    params: ClientParams,
    probe: ProbeResult,
    result: ClientResult,
) -> Report<ClientParams, ClientResult, ClientRatios> {
    let ratios = client_ratios(&params, &probe, &result);
    Report::new("consume", params, Some(probe), result, Some(ratios))
}

/// The `modes` scenario: both broker modes under many producers' small batches.
pub fn modes(
    params: ModesParams,
    probe: ProbeResult,
    result: ModesResult,
) -> Report<ModesParams, ModesResult, ModesRatios> {
    let ratios = crate::modes::ratios(&result);
    Report::new("modes", params, Some(probe), result, Some(ratios))
}

pub fn metadata(
    params: MetadataParams,
    result: MetadataResult,
) -> Report<MetadataParams, MetadataResult, ()> {
    Report::new("metadata", params, None, result, None)
}

pub fn group(params: GroupParams, result: GroupResult) -> Report<GroupParams, GroupResult, ()> {
    Report::new("group", params, None, result, None)
}

pub fn hop(params: HopParams, result: HopResult) -> Report<HopParams, HopResult, ()> {
    Report::new("hop", params, None, result, None)
}

pub fn kafka(params: KafkaParams, result: KafkaResult) -> Report<KafkaParams, KafkaResult, ()> {
    Report::new("kafka", params, None, result, None)
}

pub fn scrape(
    params: ScrapeParams,
    result: ScrapeResult,
) -> Report<ScrapeParams, ScrapeResult, ()> {
    Report::new("scrape", params, None, result, None)
}

pub fn partitions(
    params: PartitionsParams,
    result: PartitionsResult,
) -> Report<PartitionsParams, PartitionsResult, ()> {
    Report::new("partitions", params, None, result, None)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;

    use clap::CommandFactory;
    use serde_json::Value;

    use super::*;
    use crate::storage::Latency;

    /// The documentation checked against the code.
    const SCHEMA_DOC: &str = "docs/bench.md";

    /// The repository path of [`SCHEMA_DOC`].
    fn schema_doc_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(SCHEMA_DOC)
    }

    /// (level-2, level-3, level-4 heading) → the keys in that section's tables.
    type DocKeys = BTreeMap<(String, String, String), BTreeSet<String>>;

    fn heading(text: &str) -> String {
        text.trim().replace('`', "").to_lowercase()
    }

    /// The keys `docs/bench.md` documents: the first cell, in backticks, of every table row,
    /// filed under the headings above it.
    fn documented_keys(doc: &str) -> DocKeys {
        let (mut h2, mut h3, mut h4) = (String::new(), String::new(), String::new());
        let mut keys = DocKeys::new();
        for line in doc.lines() {
            if let Some(text) = line.strip_prefix("#### ") {
                h4 = heading(text);
            } else if let Some(text) = line.strip_prefix("### ") {
                (h3, h4) = (heading(text), String::new());
            } else if let Some(text) = line.strip_prefix("## ") {
                (h2, h3, h4) = (heading(text), String::new(), String::new());
            } else if let Some(row) = line.strip_prefix("| `") {
                let key = row.split('`').next().unwrap_or_default();
                keys.entry((h2.clone(), h3.clone(), h4.clone()))
                    .or_default()
                    .insert(key.to_string());
            }
        }
        keys
    }

    fn keys_of(value: &Value) -> BTreeSet<String> {
        value
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn section(doc: &DocKeys, h2: &str, h3: &str, h4: &str) -> BTreeSet<String> {
        doc.get(&(h2.into(), h3.into(), h4.into()))
            .cloned()
            .unwrap_or_default()
    }

    /// Fails naming the keys written but not documented, and documented but not written.
    fn assert_documented(documented: &BTreeSet<String>, written: &BTreeSet<String>, what: &str) {
        let undocumented: Vec<&String> = written.difference(documented).collect();
        let unwritten: Vec<&String> = documented.difference(written).collect();
        assert!(
            undocumented.is_empty() && unwritten.is_empty(),
            "{what} in {SCHEMA_DOC}: written but not documented {undocumented:?}, documented \
             but not written {unwritten:?}"
        );
    }

    fn json(report: &impl Serialize) -> Value {
        serde_json::to_value(report).unwrap()
    }

    /// Every scenario's report, built from default values by the functions the scenarios use.
    fn default_reports() -> Vec<(&'static str, Value)> {
        vec![
            (
                "probe",
                json(&probe(ProbeParams::default(), ProbeResult::default())),
            ),
            (
                "storage",
                json(&storage(
                    StorageParams::default(),
                    ProbeResult::default(),
                    StorageResult::default(),
                )),
            ),
            (
                "metadata",
                json(&metadata(
                    MetadataParams::default(),
                    MetadataResult::default(),
                )),
            ),
            (
                "hop",
                json(&hop(HopParams::default(), HopResult::default())),
            ),
            (
                "scrape",
                json(&scrape(ScrapeParams::default(), ScrapeResult::default())),
            ),
            (
                "partitions",
                json(&partitions(
                    PartitionsParams::default(),
                    PartitionsResult {
                        produce: vec![Default::default()],
                        idle: vec![Default::default()],
                        ..Default::default()
                    },
                )),
            ),
            (
                "kafka",
                json(&kafka(KafkaParams::default(), KafkaResult::default())),
            ),
            (
                "produce",
                json(&produce(
                    NetworkParams::default(),
                    ProbeResult::default(),
                    NetworkResult::default(),
                )),
            ),
            (
                "e2e",
                json(&e2e(
                    ClientParams::default(),
                    ProbeResult::default(),
                    ClientResult::default(),
                )),
            ),
            (
                "consume",
                json(&consume(
                    ClientParams::default(),
                    ProbeResult::default(),
                    ClientResult::default(),
                )),
            ),
            (
                "modes",
                json(&modes(
                    ModesParams::default(),
                    ProbeResult::default(),
                    ModesResult::default(),
                )),
            ),
            (
                "group",
                json(&group(GroupParams::default(), GroupResult::default())),
            ),
            (
                "failover",
                json(&failover(
                    FailoverParams::default(),
                    FailoverResult::default(),
                )),
            ),
            (
                "catchup",
                json(&catchup(
                    CatchupParams::default(),
                    ProbeResult::default(),
                    CatchupResult::default(),
                )),
            ),
        ]
    }

    #[test]
    fn the_documented_keys_are_the_written_keys() {
        let path = schema_doc_path();
        let doc = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let doc = documented_keys(&doc);
        const FILES: &str = "result files";
        const SCENARIOS: &str = "scenarios";

        let latency = json(&Latency::default());
        assert_documented(
            &section(&doc, FILES, "latency summaries", ""),
            &keys_of(&latency),
            "latency summary keys",
        );
        assert_documented(
            &section(&doc, FILES, "probe", ""),
            &keys_of(&json(&ProbeResult::default())),
            "`probe` keys",
        );

        let reports = default_reports();
        for (scenario, report) in &reports {
            assert_eq!(report["scenario"], *scenario);
            assert_documented(
                &section(&doc, FILES, "top level", ""),
                &keys_of(report),
                &format!("top-level keys of a {scenario} file"),
            );
            assert_documented(
                &section(&doc, FILES, "machine", ""),
                &keys_of(&report["machine"]),
                "`machine` keys",
            );
            for part in ["params", "result", "ratios"] {
                // A part that is null has no table.
                assert_documented(
                    &section(&doc, SCENARIOS, scenario, part),
                    &keys_of(&report[part]),
                    &format!("`{part}` keys of the {scenario} scenario"),
                );
            }
            // Latency summaries nest whole, as documented once.
            for (key, value) in report["result"].as_object().into_iter().flatten() {
                if value.get("p50_us").is_some() {
                    assert_eq!(keys_of(value), keys_of(&latency), "result.{key}");
                }
            }
        }

        // Every scenario subcommand is documented, and nothing else is.
        let documented: BTreeSet<String> = doc
            .keys()
            .filter(|(h2, h3, _)| h2 == SCENARIOS && !h3.is_empty())
            .map(|(_, h3, _)| h3.clone())
            .collect();
        let tested: BTreeSet<String> = reports.iter().map(|(s, _)| s.to_string()).collect();
        let commands: BTreeSet<String> = crate::Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .filter(|name| name != "report")
            .collect();
        assert_eq!(documented, tested, "scenarios in {SCHEMA_DOC}");
        assert_eq!(
            commands, tested,
            "every scenario subcommand has a test report"
        );
    }

    #[test]
    fn the_doc_parser_files_keys_under_their_headings() {
        let doc = "# T\n## Result files\n### Top level\n| key | type |\n| --- | --- |\n\
                   | `scenario` | string |\n| `git_revision` | string |\n## Scenarios\n\
                   ### `hop`\n#### `params`\n| `round_trips` | integer |\nText with `code`.\n";
        let keys = documented_keys(doc);
        assert_eq!(keys.len(), 2);
        assert_eq!(
            section(&keys, "result files", "top level", ""),
            BTreeSet::from(["scenario".to_string(), "git_revision".to_string()])
        );
        assert_eq!(
            section(&keys, "scenarios", "hop", "params"),
            BTreeSet::from(["round_trips".to_string()])
        );
    }

    #[test]
    fn ratios_are_null_rather_than_infinite() {
        let report = json(&storage(
            StorageParams::default(),
            ProbeResult::default(),
            StorageResult::default(),
        ));
        assert_eq!(report["ratios"]["append_vs_raw_write"], Value::Null);
        let probe_figures = ProbeResult {
            disk_write_fdatasync_mb_s: 2000.0,
            disk_read_mb_s: 1000.0,
            ..ProbeResult::default()
        };
        let result = NetworkResult {
            produce_mb_s: 500.0,
            read_back_mb_s: Some(800.0),
            ..NetworkResult::default()
        };
        let full_speed = json(&produce(
            NetworkParams::default(),
            probe_figures.clone(),
            result.clone(),
        ));
        assert_eq!(full_speed["ratios"]["produce_vs_raw_write"], 0.25);
        assert_eq!(full_speed["ratios"]["read_back_vs_raw_read"], 0.8);
        let paced = json(&produce(
            NetworkParams {
                rate: Some(5000),
                ..NetworkParams::default()
            },
            probe_figures,
            result,
        ));
        assert_eq!(paced["ratios"]["produce_vs_raw_write"], Value::Null);
        let alone = json(&probe(
            ProbeParams { disk_mib: 512 },
            ProbeResult::default(),
        ));
        assert_eq!(alone["result"], Value::Null);
        assert_eq!(alone["ratios"], Value::Null);
        assert_eq!(alone["params"]["disk_mib"], 512);
    }
}
