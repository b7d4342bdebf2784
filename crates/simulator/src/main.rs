//! The simulator binary: parses the command line and runs `load` or `session`.

use std::{io::Write, process::ExitCode};

use anyhow::Context;
use charge_point_simulator::{
    cli::{Cli, Command, Format},
    load, open_file_limit, session,
};
use clap::Parser;

/// File descriptors the simulator needs beside one per charge point.
const SPARE_FILES: u64 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("charge-point-simulator: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Load(args) => {
            let options = args.options()?;
            let connector = args.connect.connector()?;
            if let Some(limit) = open_file_limit() {
                let needed = options.charge_points as u64 + SPARE_FILES;
                if needed > limit {
                    anyhow::bail!(
                        "{} charge points need about {needed} open files but this process may open {limit}; \
                         raise `ulimit -n` or run several simulators with --first-number",
                        options.charge_points
                    );
                }
            }
            let format = args.format;
            let fail_on_errors = args.fail_on_errors;
            let summary = load::run(connector, options, std::io::stderr()).await;
            let mut stdout = std::io::stdout();
            match format {
                Format::Text => write!(stdout, "{}", summary.to_text())?,
                Format::Json => writeln!(
                    stdout,
                    "{}",
                    serde_json::to_string_pretty(&summary).context("summary to JSON")?
                )?,
            }
            Ok(if fail_on_errors && !summary.is_clean() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Session(args) => {
            let options = args.options()?;
            let connector = args.connect.connector()?;
            let mut stdout = std::io::stdout();
            let report = session::run(&connector, &options, &mut stdout).await?;
            writeln!(
                stdout,
                "sent {} CALLs, {} answered, {} failed",
                report.sent, report.answered, report.failed
            )?;
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
