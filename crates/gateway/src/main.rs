//! The gateway binary: reads the configuration, starts telemetry, and runs [`Gateway`]
//! until SIGINT or SIGTERM.

use std::process::ExitCode;

use charge_point_gateway::{cli::Cli, telemetry, Config, Gateway};
use clap::Parser;

/// mimalloc instead of the system allocator: per-message work is allocation-heavy (parsed
/// payloads, events, answers), and glibc's malloc and free took a tenth of the CPU under
/// load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("charge-point-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = telemetry::init_logging(&config.log);
    let gateway = match Gateway::bind(config).await {
        Ok(gateway) => gateway,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("charge-point-gateway: {e}");
            return ExitCode::from(1);
        }
    };
    gateway.run(shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
