//! Logging: human-readable on a terminal, JSON lines otherwise, always on stderr (stdout
//! carries events in the embedded mode).

pub mod debug_trace;
pub mod limit;

use std::{io::IsTerminal, sync::OnceLock};

use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter, Registry};

use crate::config::{LogConfig, LogFormat};

/// Changes the log filter of the running process.
static LOG_FILTER: OnceLock<(
    reload::Handle<EnvFilter, Registry>,
    std::sync::Mutex<String>,
)> = OnceLock::new();

/// Why the log level could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum LogLevelError {
    /// The process did not install the gateway's subscriber (e.g. embedded in tests).
    #[error("log level control is not available in this process")]
    Unavailable,
    /// The filter does not parse.
    #[error("invalid log filter: {0}")]
    Invalid(String),
}

/// The log filter in force, when the gateway's subscriber is installed.
pub fn log_level() -> Option<String> {
    LOG_FILTER
        .get()
        .map(|(_, current)| current.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

/// Replaces the log filter at run time (e.g. `debug` or `info,charge_point_gateway=debug`).
pub fn set_log_level(directives: &str) -> Result<(), LogLevelError> {
    let (handle, current) = LOG_FILTER.get().ok_or(LogLevelError::Unavailable)?;
    let filter =
        EnvFilter::try_new(directives).map_err(|e| LogLevelError::Invalid(e.to_string()))?;
    handle
        .reload(filter)
        .map_err(|e| LogLevelError::Invalid(e.to_string()))?;
    *current.lock().unwrap_or_else(|e| e.into_inner()) = directives.to_owned();
    Ok(())
}

/// Installs the global subscriber. The level was validated with the configuration.
pub fn init_logging(config: &LogConfig) {
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = LOG_FILTER.set((handle, std::sync::Mutex::new(config.level.clone())));
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(true)
                    .with_writer(std::io::stderr),
            )
            .init();
    } else {
        registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .init();
    }
}
