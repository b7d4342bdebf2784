//! Configuration: defaults, then a TOML file, then `CPGW_` environment variables, then
//! command-line flags, each layer overriding the one before. Every option is documented
//! in `docs/configuration.md`; a bad value stops the program at start, naming the option.

use std::time::Duration;

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};

use crate::{cli::Cli, config_check::InvalidOption};

pub use crate::admin::config::AdminConfig;
pub use crate::auth::config::{AuthConfig, UnknownChargePoints};
pub use crate::backend::config::{BackendConfig, ReplyFallback};
pub use crate::cluster::config::ClusterConfig;
pub use crate::kafka::config::{KafkaConfig, TopicsConfig};
pub use crate::listener::config::ListenerConfig;
pub use crate::metrics::config::MetricsConfig;
pub use crate::responder::{AuthorizePolicy, ResponderConfig};
pub use crate::session::SessionConfig;
pub use crate::sink::config::{EventOutput, EventsConfig, Fsync};
pub use crate::telemetry::config::{LogConfig, LogFormat};
pub use crate::tls::config::{CertificateBinding, CertificateFiles, TlsConfig, TlsVersion};

/// The configuration's top-level keys. `CPGW_` variables outside them (such as the
/// `CPGW_SERVICE_HOST` Kubernetes derives from a service named `cpgw`) are ignored;
/// unknown keys inside a section are still refused.
const TOP_LEVEL_KEYS: &[&str] = &[
    "node_id",
    "listener",
    "session",
    "validation",
    "responder",
    "events",
    "admin",
    "metrics",
    "shutdown",
    "log",
    "kafka",
    "backend",
    "auth",
    "tls",
    "cluster",
];

/// The whole gateway configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This instance's name in events and logs (default: `$HOSTNAME`, else `gateway`).
    pub node_id: String,
    /// The OCPP WebSocket listener.
    pub listener: ListenerConfig,
    /// Per-connection behaviour.
    pub session: SessionConfig,
    /// Payload validation leniency.
    pub validation: ValidationConfig,
    /// The local responder (answers when no backend decides).
    pub responder: ResponderConfig,
    /// The embedded event sink.
    pub events: EventsConfig,
    /// The admin HTTP API.
    pub admin: AdminConfig,
    /// The Prometheus metrics endpoint.
    pub metrics: MetricsConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
    /// The Kafka bus (off while `kafka.brokers` is empty).
    pub kafka: KafkaConfig,
    /// Actions answered by the backend through Kafka.
    pub backend: BackendConfig,
    /// Charge point authentication (security profiles, credentials).
    pub auth: AuthConfig,
    /// The `wss://` listener (on when certificates are configured).
    pub tls: TlsConfig,
    /// Several instances sharing a registry (off while `cluster.redis_urls` is empty).
    pub cluster: ClusterConfig,
}

/// Graceful shutdown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Time over which open connections are closed (1001), spread evenly.
    #[serde(with = "humantime_serde")]
    pub drain_time: Duration,
}

/// Payload validation leniency.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Accept `date-time` values without a time zone, read as UTC.
    pub accept_timestamps_without_zone: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "gateway".to_owned()),
            listener: ListenerConfig::default(),
            session: SessionConfig::default(),
            validation: ValidationConfig::default(),
            responder: ResponderConfig::default(),
            events: EventsConfig::default(),
            admin: AdminConfig::default(),
            metrics: MetricsConfig::default(),
            shutdown: ShutdownConfig::default(),
            log: LogConfig::default(),
            kafka: KafkaConfig::default(),
            backend: BackendConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            accept_timestamps_without_zone: true,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_time: Duration::from_secs(10),
        }
    }
}

/// A configuration that cannot be used, with the option at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or a value has the wrong type.
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value is well-typed but not usable.
    #[error("invalid configuration: option `{option}`: {reason}")]
    Invalid {
        /// The dotted option name, e.g. `listener.path_prefix`.
        option: &'static str,
        /// Why the value cannot be used.
        reason: String,
    },
}

impl From<InvalidOption> for ConfigError {
    fn from(invalid: InvalidOption) -> ConfigError {
        ConfigError::Invalid {
            option: invalid.option,
            reason: invalid.reason,
        }
    }
}

impl Config {
    /// Loads the layered configuration for `cli`.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &cli.config {
            if !path.exists() {
                return Err(ConfigError::Invalid {
                    option: "--config",
                    reason: format!("file {} does not exist", path.display()),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let own_variables = Env::prefixed("CPGW_").split("__").filter(|key| {
            let top = key.as_str().split('.').next().unwrap_or_default();
            TOP_LEVEL_KEYS
                .iter()
                .any(|known| known.eq_ignore_ascii_case(top))
        });
        figment = figment
            .merge(own_variables)
            .merge(Serialized::defaults(cli.overrides()));
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that are well-typed but unusable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |option, reason: &str| {
            Err(ConfigError::Invalid {
                option,
                reason: reason.to_owned(),
            })
        };
        self.listener.validate()?;
        self.session.validate()?;
        self.events.validate()?;
        self.kafka.validate()?;
        self.backend.validate()?;
        self.admin.validate()?;
        self.metrics.validate()?;
        self.auth.validate()?;
        self.tls.validate()?;
        self.cluster.validate()?;
        if self.auth.credentials_store == crate::auth::CredentialsStore::Redis
            && !self.cluster.enabled()
        {
            return invalid(
                "auth.credentials_store",
                "\"redis\" needs cluster.redis_urls",
            );
        }
        if self.tls.proxy_protocol && self.listener.trusted_proxies.is_empty() {
            return Err(ConfigError::Invalid {
                option: "listener.trusted_proxies",
                reason: "must list the load balancers when tls.proxy_protocol is on (anyone else could claim any address)".to_owned(),
            });
        }
        if !(1..=i32::MAX as u64).contains(&self.responder.heartbeat_interval.as_secs()) {
            return invalid(
                "responder.heartbeat_interval",
                "must be between 1s and 68 years",
            );
        }
        if self.node_id.is_empty() {
            return invalid("node_id", "must not be empty");
        }
        if self.log.level.trim().is_empty() {
            return invalid("log.level", "must not be empty (e.g. \"info\")");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::Invalid {
                option: "log.level",
                reason: e.to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
// figment::Jail's closures must return figment's (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use ocpp::OcppVersion;

    #[test]
    fn the_example_file_states_exactly_the_defaults() {
        // Read with figment's own TOML provider alone, so that no CPGW_ variable of the
        // environment running the test can change what it says.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/gateway.example.toml"
        );
        let example: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file_exact(path))
            .extract()
            .unwrap();
        assert_eq!(
            serde_json::to_value(&example).unwrap(),
            serde_json::to_value(Config::default()).unwrap(),
            "config/gateway.example.toml and the defaults disagree"
        );
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn durable_actions_must_exist() {
        let mut config = Config::default();
        config.events.durable_actions.push("StopTransacton".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("events.durable_actions") && err.contains("StopTransacton"),
            "{err}"
        );
    }

    #[test]
    fn fallback_must_be_supported() {
        let mut config = Config::default();
        config.listener.subprotocols = vec![OcppVersion::V201];
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("listener.fallback_subprotocol"), "{err}");
    }

    #[test]
    fn toml_and_env_layers_name_the_bad_option() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "gw.toml",
                "[listener]\nmax_message_size = 2048\n[session]\ncall_timeout = \"5s\"\n",
            )?;
            jail.set_env("CPGW_SESSION__CALL_QUEUE_SIZE", "3");
            let cli = Cli::for_config("gw.toml");
            let config = Config::load(&cli).expect("loads");
            assert_eq!(config.listener.max_message_size, 2048);
            assert_eq!(config.session.call_timeout, Duration::from_secs(5));
            assert_eq!(config.session.call_queue_size, 3);

            jail.set_env("CPGW_SESSION__CALL_TIMEOUT", "soon");
            let err = Config::load(&cli).unwrap_err().to_string().to_lowercase();
            assert!(err.contains("call_timeout"), "{err}");

            jail.set_env("CPGW_SESSION__CALL_TIMEOUT", "5s");
            jail.set_env("CPGW_LISTENER__SUBPROTOCOLS", "[ocpp3.0]");
            let err = Config::load(&cli).unwrap_err().to_string().to_lowercase();
            assert!(err.contains("subprotocols"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("gw.toml", "[listener]\nadress = \"0.0.0.0:1\"\n")?;
            let err = Config::load(&Cli::for_config("gw.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("adress"), "{err}");
            Ok(())
        });
    }
}
