//! The `modes` scenario: does the broker's `--mode` switch matter where it should? Many
//! producers sending small batches over many connections, with identical client settings in
//! both modes, four runs of `e2e` one after another (each against a fresh embedded broker):
//! throughput mode and latency mode at full speed (MB/s), then both paced at a fixed total rate
//! (latency percentiles). Issue 16's targets: throughput mode moves at least twice latency mode's
//! MB/s at full speed, and latency mode's p99 to ack is below throughput mode's when paced.

use std::path::Path;

use serde::Serialize;

use crate::e2e::{run_e2e, ClientParams, ClientResult};

#[derive(Debug, Clone, Default, Serialize)]
pub struct ModesParams {
    /// The client settings of every run (`mode` and `rate` are set per run).
    pub client: ClientParams,
    /// Total records per second of the paced runs.
    pub paced_rate: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ModesResult {
    pub throughput_full_speed: ClientResult,
    pub latency_full_speed: ClientResult,
    pub throughput_paced: ClientResult,
    pub latency_paced: ClientResult,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ModesRatios {
    /// Throughput mode's full-speed MB/s over latency mode's (target ≥ 2).
    pub full_speed_throughput_vs_latency: Option<f64>,
    /// Latency mode's paced p99 to ack over throughput mode's (target < 1).
    pub paced_p99_latency_vs_throughput: Option<f64>,
}

/// Runs the four runs in order; `dir` holds each run's broker (removed between runs).
pub fn run(params: &ModesParams, dir: &Path, show_progress: bool) -> Result<ModesResult, String> {
    let one = |mode: &str, rate: Option<u64>| -> Result<ClientResult, String> {
        let run_params = ClientParams {
            mode: Some(mode.to_string()),
            rate,
            ..params.client.clone()
        };
        let run_dir = dir.join(format!(
            "{mode}-{}",
            rate.map_or("full".to_string(), |r| r.to_string())
        ));
        eprintln!(
            "modes: {mode} mode, {}",
            rate.map_or("full speed".to_string(), |r| format!("{r} records/s"))
        );
        let result = run_e2e(&run_params, &run_dir, show_progress).map(|r| r.result);
        let _ = std::fs::remove_dir_all(&run_dir);
        result
    };
    Ok(ModesResult {
        throughput_full_speed: one("throughput", None)?,
        latency_full_speed: one("latency", None)?,
        throughput_paced: one("throughput", Some(params.paced_rate))?,
        latency_paced: one("latency", Some(params.paced_rate))?,
    })
}

pub fn ratios(result: &ModesResult) -> ModesRatios {
    let over = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    ModesRatios {
        full_speed_throughput_vs_latency: over(
            result.throughput_full_speed.produce_mb_s,
            result.latency_full_speed.produce_mb_s,
        ),
        paced_p99_latency_vs_throughput: over(
            result.latency_paced.produce_to_ack.p99_us as f64,
            result.throughput_paced.produce_to_ack.p99_us as f64,
        ),
    }
}
