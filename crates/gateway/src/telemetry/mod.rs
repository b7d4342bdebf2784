//! Logging and tracing: log lines human-readable on a terminal, JSON lines otherwise,
//! always on stderr (stdout carries events in the embedded mode); OpenTelemetry traces
//! when the standard `OTEL_*` environment asks for them.

pub mod config;
pub mod debug_trace;
pub mod limit;
pub mod traces;

use std::{io::IsTerminal, sync::OnceLock};

use parking_lot::Mutex;

use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter};

pub use self::config::{LogConfig, LogFormat};

/// Replaces the log filter of the running process.
type Reload = Box<dyn Fn(EnvFilter) -> Result<(), reload::Error> + Send + Sync>;

/// How to change the log filter, and the filter in force.
static LOG_FILTER: OnceLock<(Reload, Mutex<String>)> = OnceLock::new();

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
    LOG_FILTER.get().map(|(_, current)| current.lock().clone())
}

/// Replaces the log filter at run time (e.g. `debug` or `info,charge_point_gateway=debug`).
pub fn set_log_level(directives: &str) -> Result<(), LogLevelError> {
    let (reload, current) = LOG_FILTER.get().ok_or(LogLevelError::Unavailable)?;
    let filter =
        EnvFilter::try_new(directives).map_err(|e| LogLevelError::Invalid(e.to_string()))?;
    reload(filter).map_err(|e| LogLevelError::Invalid(e.to_string()))?;
    *current.lock() = directives.to_owned();
    Ok(())
}

/// Flushes and stops trace export when dropped (at the end of `main`).
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber: log output, and OTLP traces when the `OTEL_*`
/// environment asks for them. The level was validated with the configuration.
pub fn init_logging(config: &LogConfig) -> TelemetryGuard {
    let provider = match traces::enabled_by_environment() {
        false => None,
        true => match traces::provider(None, None) {
            Ok(provider) => Some(provider),
            Err(e) => {
                eprintln!("charge-point-gateway: OpenTelemetry export not started: {e}");
                None
            }
        },
    };
    let otel = provider.as_ref().map(traces::layer);

    // The level filters the log output only (a per-layer filter): a global filter would
    // also decide which spans OpenTelemetry sees.
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let reload: Reload = Box::new(move |filter| handle.reload(filter));
    let _ = LOG_FILTER.set((reload, Mutex::new(config.level.clone())));

    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(otel);
    if json {
        let output = fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr);
        registry.with(output.with_filter(filter)).init();
    } else {
        let output = fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr);
        registry.with(output.with_filter(filter)).init();
    }
    if provider.is_some() {
        tracing::info!("OpenTelemetry trace export on");
    }
    TelemetryGuard { provider }
}
