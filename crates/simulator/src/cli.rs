//! Command-line interface.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use ocpp::OcppVersion;

use crate::{
    behaviour::{Rate, Scenario},
    charge_point::{Backoff, Profile},
    connect::{parse_sources, Connector, TlsOptions},
    load::LoadOptions,
    payloads::Identity,
    session::{read_script, SessionOptions},
    version::{self, VersionMix},
};

/// OCPP charge point simulator and load generator.
#[derive(Debug, Parser)]
#[command(name = "charge-point-simulator", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The two ways to run the simulator.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Simulate many charge points and measure the central system.
    Load(Box<LoadArgs>),
    /// Run one charge point through a scripted session, printing every frame.
    Session(Box<SessionArgs>),
}

/// Where and how to connect; shared by both commands.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The central system's URL; the charge point id is appended as the last path segment.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ocpp")]
    pub url: String,
    /// Basic auth password (OCPP security profiles 1 and 2); the user name is the charge
    /// point id, and `{id}` in the password is replaced by it.
    #[arg(long, env = "CPSIM_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Extra CA certificates (PEM) to trust for wss://, beside the system's.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for wss:// with client certificates (security profile 3).
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) for --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Never resume a TLS session (by default each charge point resumes its own, as a
    /// station does when it reconnects).
    #[arg(long)]
    pub no_tls_resumption: bool,
    /// Local addresses to connect from, in turn: `127.0.0.2-127.0.0.20,127.0.1.1`. Each
    /// source address has its own range of ephemeral ports, so several get past the
    /// ~28,000 connections one address can open to one server port.
    #[arg(long, value_parser = parse_sources)]
    pub source_addresses: Option<std::vec::Vec<std::net::IpAddr>>,
    /// Give up on a connection attempt after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Give up waiting for an answer after this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,
}

impl ConnectArgs {
    /// Builds the connector; errors name the option at fault.
    pub fn connector(&self) -> anyhow::Result<Connector> {
        Connector::new(
            &self.url,
            &TlsOptions {
                ca_file: self.ca_file.clone(),
                client_cert: self.client_cert.clone(),
                client_key: self.client_key.clone(),
                no_resumption: self.no_tls_resumption,
            },
            self.password.clone(),
            self.source_addresses.clone().unwrap_or_default(),
            self.connect_timeout,
        )
    }
}

/// `load` options.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Connection options.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Number of charge points.
    #[arg(short = 'n', long, default_value_t = 10)]
    pub charge_points: usize,
    /// Versions and their shares, e.g. `1.6=50,2.0.1=30,2.1=20`, or one version.
    #[arg(long, default_value = "1.6=50,2.0.1=30,2.1=20")]
    pub versions: VersionMix,
    /// What the charge points do: charging, telemetry (Heartbeat, StatusNotification and
    /// MeterValues in turn), heartbeat, or idle (boot, then heartbeats at the central
    /// system's interval).
    #[arg(long, default_value = "charging")]
    pub scenario: Scenario,
    /// Messages per second per charge point: a number, `N/s`, `N/min`, `N/h`, or `max`
    /// (the next message as soon as the previous one is answered).
    #[arg(long, default_value = "6/min")]
    pub rate: Rate,
    /// New connections per second while ramping up; 0 opens them all at once.
    #[arg(long, default_value_t = 500.0)]
    pub ramp_rate: f64,
    /// How long to measure, after every charge point has booted and the warm-up.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Time between every charge point booted and the measurement starting.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Drop every connection at once this long into the measurement, and report the time
    /// until all have booted again (a reconnect storm).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub storm_after: Option<Duration>,
    /// Charge point ids are this prefix and a six-digit number.
    #[arg(long, default_value = "SIM-")]
    pub id_prefix: String,
    /// The number of the first charge point (to run several simulators side by side).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub first_number: u64,
    /// Connectors (EVSEs in 2.x) per charge point.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub connectors: u32,
    /// Meter readings per charging session.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub meter_values: u32,
    /// Heartbeat interval; by default the one in the BootNotification answer; 0s sends none.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Reconnect backoff: the first retry's wait (OCPP's RetryBackOffWaitMinimum); each
    /// retry in a row doubles it.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub reconnect_min: Duration,
    /// Reconnect backoff: the longest wait before the random part.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub reconnect_max: Duration,
    /// Reconnect backoff: a random extra wait of up to this (RetryBackOffRandomRange).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub reconnect_jitter: Duration,
    /// Also report the CPU time this process (the server under test, on the same
    /// machine) spent over the measurement window, per answered CALL.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Count an echoed CALL as its answer, for a bare WebSocket echo server baseline.
    #[arg(long)]
    pub echo_baseline: bool,
    /// Final summary format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Progress line interval on stderr; 0s turns progress off.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub progress: Duration,
    /// Exit 1 when the run counted any error or not every charge point booted (for CI
    /// jobs that gate on a clean run).
    #[arg(long)]
    pub fail_on_errors: bool,
}

/// Summary formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// One JSON object.
    Json,
}

impl LoadArgs {
    /// The run's options; errors name the option at fault.
    pub fn options(&self) -> anyhow::Result<LoadOptions> {
        if self.charge_points == 0 {
            anyhow::bail!("--charge-points must be at least 1");
        }
        if !(self.ramp_rate.is_finite() && self.ramp_rate >= 0.0) {
            anyhow::bail!("--ramp-rate must be 0 or more connections per second");
        }
        if self.reconnect_max < self.reconnect_min {
            anyhow::bail!("--reconnect-max must not be below --reconnect-min");
        }
        if let Some(after) = self.storm_after {
            if after >= self.duration {
                anyhow::bail!("--storm-after must be within --duration");
            }
        }
        Ok(LoadOptions {
            charge_points: self.charge_points,
            id_prefix: self.id_prefix.clone(),
            first_number: self.first_number as usize,
            mix: self.versions.clone(),
            ramp_rate: self.ramp_rate,
            duration: self.duration,
            warmup: self.warmup,
            storm_after: self.storm_after,
            boot_grace: crate::load::BOOT_GRACE,
            progress_every: (!self.progress.is_zero()).then_some(self.progress),
            server_pid: self.server_pid,
            profile: Profile {
                scenario: self.scenario,
                rate: self.rate,
                heartbeat_interval: self.heartbeat_interval,
                connectors: self.connectors,
                meter_values_per_transaction: self.meter_values,
                call_timeout: self.connect.call_timeout,
                backoff: Backoff {
                    minimum: self.reconnect_min,
                    maximum: self.reconnect_max,
                    jitter: self.reconnect_jitter,
                },
                echo_baseline: self.echo_baseline,
                identity: Identity::default(),
            },
        })
    }
}

/// `session` options.
#[derive(Debug, Args)]
pub struct SessionArgs {
    /// Connection options.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The charge point id.
    #[arg(long, default_value = "SIM-SESSION")]
    pub id: String,
    /// OCPP version: 1.6, 2.0.1 or 2.1.
    #[arg(long = "ocpp", default_value = "1.6", value_parser = version::parse)]
    pub version: OcppVersion,
    /// CALLs to send after booting instead of a charging session: one
    /// `["Action", {payload}]` per line, `#` starts a comment.
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// Stay connected afterwards, answering commands, until Ctrl-C.
    #[arg(long)]
    pub stay: bool,
    /// Meter readings in the charging session.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub meter_values: u32,
}

impl SessionArgs {
    /// The session's options; errors name the option at fault.
    pub fn options(&self) -> anyhow::Result<SessionOptions> {
        Ok(SessionOptions {
            id: self.id.clone(),
            version: self.version,
            script: self.script.as_deref().map(read_script).transpose()?,
            stay: self.stay,
            call_timeout: self.connect.call_timeout,
            meter_values: self.meter_values,
            identity: Identity::default(),
        })
    }
}
