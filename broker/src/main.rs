//! `sluice-broker`: starts one broker (see `sluice_broker::cli`).

use std::process::ExitCode;

fn main() -> ExitCode {
    sluice_broker::cli::run(std::env::args_os().collect())
}
