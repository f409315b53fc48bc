//! `sluice`: Sluice's command-line tool. Today: offline log inspection (`sluice log dump`,
//! `sluice log verify`), an operator's first tool when something looks wrong.

mod log;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "Sluice command-line tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Partition logs on disk (offline: run them on a stopped broker's files or a copy).
    Log {
        #[command(subcommand)]
        command: LogCommand,
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
    let outcome = match cli.command {
        Command::Log {
            command: LogCommand::Dump { path, records },
        } => log::dump(&path, records),
        Command::Log {
            command: LogCommand::Verify { dir },
        } => log::verify(&dir),
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
