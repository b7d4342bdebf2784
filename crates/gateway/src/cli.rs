//! Command-line flags: the last configuration layer, for the options most often set by hand.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;
use serde_json::{json, Map, Value};

use crate::{sink::config::EventOutput, telemetry::LogFormat};

/// OCPP gateway between EV charge points (OCPP-J 1.6 / 2.0.1 / 2.1 over WebSocket) and a
/// CSMS backend. Every option can also be set in a TOML file or with `CPGW_` variables;
/// see docs/configuration.md.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "charge-point-gateway", version, about)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// OCPP WebSocket listener address (listener.address).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Admin HTTP API address (admin.address).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Prometheus metrics address (metrics.address).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where events go: stdout, file or none (events.output).
    #[arg(long, value_enum, value_name = "OUTPUT")]
    pub events: Option<EventOutputArg>,
    /// JSON-lines file for events (events.file); implies `--events file`.
    #[arg(long, value_name = "FILE")]
    pub events_file: Option<PathBuf>,
    /// Log format: auto, json or text (log.format).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,
    /// Log filter, e.g. `info` or `debug` (log.level).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// This instance's name in events and logs (node_id).
    #[arg(long, value_name = "NAME")]
    pub node_id: Option<String>,
    /// A tool to run instead of the gateway.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Tools the binary runs instead of the gateway.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Reads a charge point password from standard input (one line) and prints its
    /// argon2id hash, for `password_hash` in the credentials file or `passwordHash` in
    /// the admin API. The password is never echoed or logged.
    HashPassword {
        /// argon2id memory cost in KiB (the default is OWASP's recommendation; each
        /// verification needs this much memory).
        #[arg(long, default_value_t = crate::auth::password::DEFAULT_MEMORY_KIB)]
        memory_kib: u32,
        /// argon2id passes over the memory.
        #[arg(long, default_value_t = crate::auth::password::DEFAULT_PASSES)]
        passes: u32,
    },
    /// Reads the configuration (file, environment, flags) as the gateway would, prints
    /// it as TOML with every default filled in, and exits: 0 when it is valid, 2 with
    /// the offending option otherwise. Nothing is bound or opened.
    CheckConfig,
}

/// `--events` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EventOutputArg {
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines appended to a file.
    File,
    /// Only the in-memory ring.
    None,
}

/// `--log-format` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormatArg {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// JSON lines.
    Json,
    /// Human-readable text.
    Text,
}

impl Cli {
    /// A `Cli` that only names a configuration file (for tests and embedding).
    pub fn for_config(path: impl Into<PathBuf>) -> Cli {
        Cli {
            config: Some(path.into()),
            ..Cli::default()
        }
    }

    /// The flags given, as a partial configuration tree to merge over the other layers.
    pub fn overrides(&self) -> Value {
        let mut root = Map::new();
        let mut set = |section: Option<&str>, key: &str, value: Value| {
            let target = match section {
                Some(section) => root
                    .entry(section)
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("sections are objects"),
                None => &mut root,
            };
            target.insert(key.to_owned(), value);
        };
        if let Some(addr) = self.listen {
            set(Some("listener"), "address", json!(addr.to_string()));
        }
        if let Some(addr) = self.admin_listen {
            set(Some("admin"), "address", json!(addr.to_string()));
        }
        if let Some(addr) = self.metrics_listen {
            set(Some("metrics"), "address", json!(addr.to_string()));
        }
        let output = self.events.map(|o| match o {
            EventOutputArg::Stdout => EventOutput::Stdout,
            EventOutputArg::File => EventOutput::File,
            EventOutputArg::None => EventOutput::None,
        });
        if let Some(file) = &self.events_file {
            set(Some("events"), "file", json!(file));
        }
        if let Some(output) = output.or(self.events_file.as_ref().map(|_| EventOutput::File)) {
            set(Some("events"), "output", json!(output));
        }
        if let Some(format) = self.log_format {
            let format = match format {
                LogFormatArg::Auto => LogFormat::Auto,
                LogFormatArg::Json => LogFormat::Json,
                LogFormatArg::Text => LogFormat::Text,
            };
            set(Some("log"), "format", json!(format));
        }
        if let Some(level) = &self.log_level {
            set(Some("log"), "level", json!(level));
        }
        if let Some(node_id) = &self.node_id {
            set(None, "node_id", json!(node_id));
        }
        Value::Object(root)
    }
}
