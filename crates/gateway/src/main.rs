//! The gateway binary: reads the configuration, starts telemetry, and runs [`Gateway`]
//! until SIGINT or SIGTERM.

use std::process::ExitCode;

use charge_point_gateway::{
    auth::password::{PasswordHashString, ANY_VERSION_LENGTHS},
    cli::{Cli, Command},
    telemetry, Config, Gateway,
};
use clap::Parser;

/// mimalloc instead of the system allocator: per-message work is allocation-heavy (parsed
/// payloads, events, answers), and glibc's malloc and free took a tenth of the CPU under
/// load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::HashPassword { memory_kib, passes }) = cli.command {
        return hash_password(memory_kib, passes);
    }
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("charge-point-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        return check_config(&config);
    }
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

/// `hash-password`: one line from standard input to an argon2id PHC string on standard
/// output.
fn hash_password(memory_kib: u32, passes: u32) -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("charge-point-gateway: cannot read the password: {e}");
        return ExitCode::from(1);
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if !ANY_VERSION_LENGTHS.contains(&password.len()) {
        eprintln!(
            "charge-point-gateway: a charge point password is {} to {} bytes (OCPP 1.6: 16 to 20, 2.x: 16 to 40); this one is {}",
            ANY_VERSION_LENGTHS.start(),
            ANY_VERSION_LENGTHS.end(),
            password.len()
        );
        return ExitCode::from(2);
    }
    match PasswordHashString::hash_with(password.as_bytes(), memory_kib, passes) {
        Ok(hash) => {
            println!("{}", hash.as_str());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("charge-point-gateway: {e}");
            ExitCode::from(1)
        }
    }
}

/// `check-config`: the configuration the gateway would run with, secrets left out.
fn check_config(config: &Config) -> ExitCode {
    let mut shown = config.clone();
    let hidden = || Some("(set)".to_owned());
    if shown.admin.api_token.is_some() {
        shown.admin.api_token = hidden();
    }
    if shown.cluster.internal_token.is_some() {
        shown.cluster.internal_token = hidden();
    }
    match toml::to_string(&shown) {
        Ok(text) => {
            println!("{text}");
            eprintln!("charge-point-gateway: the configuration is valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("charge-point-gateway: cannot show the configuration: {e}");
            ExitCode::from(1)
        }
    }
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
