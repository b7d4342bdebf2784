//! The gateway as a whole: composition and lifecycle. [`Gateway::bind`] builds each part
//! from its configuration section and hands it only what it uses; [`Gateway::run`]
//! starts the background tasks and shuts them down along one path.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use ocpp::Leniency;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    admin::{self, AdminState},
    auth::{
        metrics::AuthMetrics,
        store::{FileStore, StoreError},
        Authenticator, CertificatePolicy, CredentialStore, CredentialsStore,
    },
    backend::{Commander, ReplyRouter},
    cluster::{
        credential_store::RedisCredentialStore, internal::InternalState, Cluster, ClusterError,
        ClusterMetrics,
    },
    config::{Config, EventOutput},
    health::{Health, Lifecycle},
    http_server::{self, HttpLimits, HttpMetrics},
    kafka::{self, commands::CommandConsumer, metrics::KafkaMetrics, KafkaBus, KafkaSink},
    labels::HttpListener,
    listener::{Entry, OcppListener, SocketBudget},
    metrics::{server::Scrape, Metrics, MetricsRegistry},
    pipeline::{BackendAnswers, Pipeline, Publisher},
    registry::Registry,
    responder::LocalResponder,
    security_events::SecurityEvents,
    session::SessionContext,
    sink::{
        embedded::{EmbeddedOptions, EmbeddedSink, Output},
        metrics::SinkMetrics,
        ring::EventRing,
        EventSink,
    },
    telemetry::debug_trace::DebugTraces,
    tls::{metrics::TlsMetrics, TlsServer, TlsSetupError},
    validation::Validator,
};

/// How long shutdown waits for sessions beyond the drain time before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Health probes keep this many of the admin listener's places.
const ADMIN_PROBE_PLACES: usize = 4;
/// Largest admin API request body (a command with its payload), in bytes.
const ADMIN_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest request body the metrics listener reads (scrapes have none).
const METRICS_MAX_BODY_BYTES: usize = 16 * 1024;

/// A gateway whose listeners are bound, ready to run.
pub struct Gateway {
    config: Config,
    lifecycle: Arc<Lifecycle>,
    sink: Arc<dyn EventSink>,
    bus: Option<Arc<KafkaBus>>,
    replies: Option<Arc<ReplyRouter>>,
    ocpp: Arc<OcppListener>,
    commander: Arc<Commander>,
    metrics: Arc<Metrics>,
    http_metrics: HttpMetrics,
    admin: Arc<AdminState>,
    scrape: Arc<Scrape>,
    ocpp_listener: TcpListener,
    admin_listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    ocpp_sockets: SocketBudget,
    credentials: Option<Credentials>,
    auth_metrics: AuthMetrics,
    tls: Option<(Arc<TlsServer>, TcpListener)>,
    admin_tls: Option<Arc<TlsServer>>,
    cluster: Option<(Arc<Cluster>, TcpListener)>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {address} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The configured address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The event output could not be opened.
    #[error("cannot open the event output: {0}")]
    EventOutput(std::io::Error),
    /// The embedded schemas did not compile (a build defect).
    #[error(transparent)]
    Schemas(#[from] ocpp::validate::SchemaCompileError),
    /// The Kafka client rejected its configuration.
    #[error(transparent)]
    Kafka(#[from] crate::kafka::BusConfigError),
    /// The credentials file could not be read, or holds an invalid record.
    #[error("cannot load the credentials (auth.credentials_file): {0}")]
    Credentials(#[from] crate::auth::store::StoreError),
    /// A TLS certificate, key, CA bundle or CRL could not be used.
    #[error("cannot set up the TLS listener: {0}")]
    Tls(#[from] TlsSetupError),
    /// The cluster registry's client rejected its configuration.
    #[error("cannot set up the cluster: {0}")]
    Cluster(#[from] ClusterError),
}

/// Where the credential records are, chosen by `auth.credentials_store`.
enum Credentials {
    File(Arc<FileStore>),
    Redis(Arc<RedisCredentialStore>),
}

impl Credentials {
    fn store(&self) -> Arc<dyn CredentialStore> {
        match self {
            Credentials::File(store) => store.clone(),
            Credentials::Redis(store) => store.clone(),
        }
    }
}

/// Where events go, chosen by the configuration.
struct EventsOut {
    sink: Arc<dyn EventSink>,
    bus: Option<Arc<KafkaBus>>,
}

impl Gateway {
    /// Compiles schemas, opens the configured event sink and binds every listener.
    pub async fn bind(config: Config) -> Result<Gateway, StartError> {
        Gateway::bind_to(config, None).await
    }

    /// Like [`Gateway::bind`] without Kafka, with events going to `sink`.
    pub async fn bind_with_sink(
        config: Config,
        sink: Arc<dyn EventSink>,
    ) -> Result<Gateway, StartError> {
        Gateway::bind_to(config, Some(sink)).await
    }

    async fn bind_to(
        config: Config,
        sink: Option<Arc<dyn EventSink>>,
    ) -> Result<Gateway, StartError> {
        let mut registry = MetricsRegistry::new();
        let metrics = Metrics::register(&mut registry, &config.listener.subprotocols);
        let http_metrics = HttpMetrics::register(&mut registry);
        let sink_metrics = SinkMetrics::register(&mut registry);
        let events = match sink {
            Some(sink) => EventsOut { sink, bus: None },
            None => Gateway::open_events(&config, sink_metrics, &mut registry).await?,
        };
        let validator = Arc::new(Validator::new(Leniency {
            timestamps_without_zone: config.validation.accept_timestamps_without_zone,
        })?);
        let ocpp_listener = bind("OCPP listener", config.listener.address).await?;
        let admin_listener = bind("admin API", config.admin.address).await?;
        let metrics_listener = match config.metrics.enabled {
            true => Some(bind("metrics", config.metrics.address).await?),
            false => None,
        };
        // Registered with TLS off too, so that dashboards and alerts see zeros, not gaps.
        let tls_metrics = TlsMetrics::register(&mut registry);
        // HTTPS for the admin API; its handshakes are not counted with the charge points'.
        let admin_tls = match config.admin.tls() {
            Some(tls) => Some(Arc::new(TlsServer::new(tls, TlsMetrics::default())?)),
            None => None,
        };
        let tls = match config.tls.enabled() {
            true => {
                let server = Arc::new(TlsServer::new(config.tls.clone(), tls_metrics.clone())?);
                let listener = bind("TLS listener", config.tls.address).await?;
                Some((server, listener))
            }
            false => None,
        };
        let ocpp_sockets = SocketBudget::from_open_file_limit(
            config.listener.max_connections,
            config.admin.max_connections + config.metrics.max_connections,
        );

        let lifecycle = Arc::new(Lifecycle::default());
        let sessions = Arc::new(Registry::default());
        let cluster_metrics = ClusterMetrics::register(&mut registry);
        let cluster = match config.cluster.enabled() {
            true => {
                let listener =
                    bind("cluster internal API", config.cluster.internal_address).await?;
                let bound = listener
                    .local_addr()
                    .unwrap_or(config.cluster.internal_address);
                let node = Arc::new(Cluster::new(
                    config.node_id.clone(),
                    config.cluster.advertised_url(bound),
                    config.cluster.clone(),
                    sessions.clone(),
                    cluster_metrics,
                )?);
                Some((node, listener))
            }
            false => None,
        };
        let ring = Arc::new(EventRing::new(config.events.ring_size));
        let debug_traces = Arc::new(DebugTraces::default());
        let replies = events
            .bus
            .as_ref()
            .map(|_| Arc::new(ReplyRouter::default()));
        let backend = replies
            .as_ref()
            .map(|replies| BackendAnswers::new(replies.clone(), config.backend.clone()));
        let security_events = Arc::new(SecurityEvents::new(
            Some(Arc::new(Publisher::new(
                config.node_id.clone(),
                events.sink.clone(),
                ring.clone(),
            ))),
            config.auth.max_security_events_per_second,
            &mut registry,
        ));
        let pipeline = Arc::new(
            Pipeline::new(
                validator.clone(),
                LocalResponder::new(&config.responder),
                Publisher::new(config.node_id.clone(), events.sink.clone(), ring.clone()),
                metrics.clone(),
                &config.events.durable_actions,
                backend,
            )
            .with_security_events(security_events.clone()),
        );
        let sessions_context = Arc::new(SessionContext {
            config: config.session.clone(),
            handler: pipeline.clone(),
            metrics: metrics.clone(),
            debug_traces: debug_traces.clone(),
        });
        let auth_metrics = AuthMetrics::register(&mut registry);
        let max_id_length = config.listener.max_charge_point_id_length;
        let file = match &config.auth.credentials_file {
            Some(path) => Some(Arc::new(FileStore::open(path, max_id_length)?)),
            None => None,
        };
        let credentials = match config.auth.credentials_store {
            CredentialsStore::File => file.map(Credentials::File),
            // Through this node's registry connection; validation made sure there is one.
            CredentialsStore::Redis => {
                let Some((node, _)) = &cluster else {
                    return Err(StartError::Credentials(StoreError::Shared(
                        "auth.credentials_store = \"redis\" needs cluster.redis_urls".to_owned(),
                    )));
                };
                Some(Credentials::Redis(Arc::new(
                    RedisCredentialStore::open(
                        node.registry().clone(),
                        max_id_length,
                        file.as_deref(),
                    )
                    .await?,
                )))
            }
        };
        let auth = Arc::new(Authenticator::new(
            credentials.as_ref().map(Credentials::store),
            config.auth.clone(),
            CertificatePolicy {
                binding: config.tls.client_certificate_binding,
                operator_name: config.tls.operator_name.clone(),
            },
            auth_metrics.clone(),
            security_events,
        ));
        let mut ocpp = OcppListener::new(
            config.listener.clone(),
            sessions.clone(),
            lifecycle.clone(),
            metrics.clone(),
            pipeline,
            sessions_context,
            auth.clone(),
        );
        let mut commander =
            Commander::new(sessions.clone(), validator, config.session.call_timeout);
        if let Some((node, _)) = &cluster {
            ocpp = ocpp.with_ownership(node.clone());
            commander = commander.with_owners(node.clone());
        }
        let (ocpp, commander) = (Arc::new(ocpp), Arc::new(commander));
        let health = Arc::new(Gateway::health(
            &config,
            &lifecycle,
            &sessions,
            &events,
            replies.as_ref(),
            cluster.as_ref().map(|(node, _)| node),
        ));
        let admin = Arc::new(AdminState {
            health: health.clone(),
            sessions,
            commander: commander.clone(),
            ring,
            debug_traces,
            metrics: metrics.clone(),
            api_token: config.admin.api_token.clone(),
            max_charge_point_id_length: config.listener.max_charge_point_id_length,
            auth: auth.clone(),
            cluster: cluster.as_ref().map(|(node, _)| node.clone()),
            node_id: config.node_id.clone(),
            profiling: config.admin.profiling(),
        });
        let scrape = {
            let metrics = metrics.clone();
            let bus = events.bus.clone();
            Arc::new(Scrape {
                registry: Arc::new(registry),
                refresh: Box::new(move || {
                    metrics.ready.set(i64::from(health.readiness().is_ok()));
                    if let Some(bus) = &bus {
                        bus.refresh_gauges();
                    }
                }),
            })
        };
        Ok(Gateway {
            config,
            lifecycle,
            sink: events.sink,
            bus: events.bus,
            replies,
            ocpp,
            commander,
            metrics,
            http_metrics,
            admin,
            scrape,
            ocpp_listener,
            admin_listener,
            metrics_listener,
            ocpp_sockets,
            credentials,
            auth_metrics,
            tls,
            admin_tls,
            cluster,
        })
    }

    /// Kafka when brokers are configured, the embedded sink otherwise.
    async fn open_events(
        config: &Config,
        metrics: SinkMetrics,
        registry: &mut MetricsRegistry,
    ) -> Result<EventsOut, StartError> {
        if config.kafka.enabled() {
            let kafka_metrics = KafkaMetrics::register(registry, &config.kafka.topics);
            let bus = KafkaBus::new(&config.kafka, metrics, kafka_metrics)?;
            let sink = Arc::new(KafkaSink::new(bus.clone()));
            return Ok(EventsOut {
                sink,
                bus: Some(bus),
            });
        }
        let output = match config.events.output {
            EventOutput::Stdout => Output::Stdout,
            EventOutput::File => Output::File(config.events.file.clone().unwrap_or_default()),
            EventOutput::None => Output::Discard,
        };
        let options = EmbeddedOptions {
            queue_capacity: config.events.queue_capacity,
            fsync: config.events.fsync,
            unready_after: config.events.unready_after,
        };
        let sink = EmbeddedSink::start(output, options, metrics)
            .await
            .map_err(StartError::EventOutput)?;
        Ok(EventsOut {
            sink: Arc::new(sink),
            bus: None,
        })
    }

    /// Readiness and `/health`: the listener, the event sink, and with Kafka the reply
    /// and command consumers.
    fn health(
        config: &Config,
        lifecycle: &Arc<Lifecycle>,
        sessions: &Arc<Registry>,
        events: &EventsOut,
        replies: Option<&Arc<ReplyRouter>>,
        cluster: Option<&Arc<Cluster>>,
    ) -> Health {
        let mut health = Health::new(lifecycle.clone(), config.node_id.clone());
        // The sink first: with Kafka it is the broker, and the reply consumer below waits
        // for the same broker, so its state would hide the real cause.
        let sink = events.sink.clone();
        health.check(move || {
            let state = sink.health();
            match state.status {
                "down" => Err(format!(
                    "event sink down: {}",
                    state.detail.unwrap_or_default()
                )),
                _ => Ok(()),
            }
        });
        if let Some(replies) = replies.filter(|_| !config.backend.actions.is_empty()) {
            let replies = replies.clone();
            health.check(move || match replies.is_assigned() {
                true => Ok(()),
                false => Err("backend reply consumer not assigned yet".to_owned()),
            });
        }
        let (listener_state, sessions) = (lifecycle.clone(), sessions.clone());
        health.component("listener", move || match listener_state.is_listening() {
            true => serde_json::json!({ "status": "up", "connections": sessions.len() }),
            false => serde_json::json!({ "status": "down" }),
        });
        let sink = events.sink.clone();
        health.component("eventSink", move || serde_json::json!(sink.health()));
        let bus = events.bus.clone();
        health.component("commandConsumer", move || {
            serde_json::json!(bus.as_ref().map(|bus| bus.command_consumer_health()))
        });
        // Shown, never a readiness check: a Redis blink must not take the fleet's
        // listeners out of the load balancer.
        let cluster = cluster.cloned();
        health.component("clusterRegistry", move || {
            serde_json::json!(cluster.as_ref().map(|cluster| cluster.health()))
        });
        health
    }

    /// The bound internal API address, when clustering is on.
    pub fn internal_address(&self) -> Option<SocketAddr> {
        self.cluster
            .as_ref()
            .and_then(|(_, listener)| listener.local_addr().ok())
    }

    /// The bound OCPP listener address.
    pub fn ocpp_address(&self) -> SocketAddr {
        self.ocpp_listener
            .local_addr()
            .unwrap_or(self.config.listener.address)
    }

    /// The bound admin API address.
    pub fn admin_address(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.admin.address)
    }

    /// The bound TLS listener address, when TLS is on.
    pub fn tls_address(&self) -> Option<SocketAddr> {
        self.tls
            .as_ref()
            .and_then(|(_, listener)| listener.local_addr().ok())
    }

    /// The bound metrics address, when metrics are on.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// A view of the running gateway for tests and embedding.
    pub fn probe(&self) -> Probe {
        Probe {
            sessions: self.ocpp.sessions.clone(),
            scrape: self.scrape.clone(),
            bus: self.bus.clone(),
        }
    }

    /// Serves until `shutdown` resolves, then drains: readiness goes false, no new
    /// connections, open ones closed with 1001 spread over the drain time, events flushed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Gateway {
            config,
            lifecycle,
            sink,
            bus,
            replies,
            ocpp,
            commander,
            metrics,
            http_metrics,
            admin,
            scrape,
            ocpp_listener,
            admin_listener,
            metrics_listener,
            ocpp_sockets,
            credentials,
            auth_metrics,
            tls,
            admin_tls,
            cluster,
        } = self;
        info!(address = %ocpp_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "ocpp listener bound");
        info!(address = %admin_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin listener bound");
        if !config.admin.is_loopback() && config.admin.api_token.is_none() {
            warn!("the admin API listens beyond loopback without admin.api_token (admin.allow_unauthenticated): anyone who reaches it can command charge points");
        }

        // Stopped in this order at shutdown: accepting, commands, sessions, then the bus
        // and the HTTP listeners.
        let stop_accepting = CancellationToken::new();
        let stop_commands = CancellationToken::new();
        let stop_bus = CancellationToken::new();
        let stop_http = CancellationToken::new();
        let sessions = TaskTracker::new();
        let background = TaskTracker::new();
        lifecycle.set_listening(true);

        let admin_limits = HttpLimits {
            max_connections: config.admin.max_connections,
            probe_places: ADMIN_PROBE_PLACES,
            idle_timeout: config.admin.idle_timeout,
            max_body_bytes: ADMIN_MAX_BODY_BYTES,
        };
        if let Some(server) = &admin_tls {
            background.spawn(crate::tls::reload::watch(server.clone(), stop_http.clone()));
        }
        background.spawn(http_server::serve(
            admin_listener,
            admin_tls,
            admin::router(admin),
            admin_limits,
            HttpListener::Admin,
            http_metrics.clone(),
            stop_http.clone(),
        ));
        if let Some(listener) = metrics_listener {
            info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics listener bound");
            let limits = HttpLimits {
                max_connections: config.metrics.max_connections,
                probe_places: 0,
                idle_timeout: config.metrics.idle_timeout,
                max_body_bytes: METRICS_MAX_BODY_BYTES,
            };
            background.spawn(http_server::serve(
                listener,
                None,
                crate::metrics::server::router(scrape),
                limits,
                HttpListener::Metrics,
                http_metrics.clone(),
                stop_http.clone(),
            ));
        }
        let tls_accept_task = tls.map(|(server, listener)| {
            info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "tls listener bound");
            background.spawn(crate::tls::reload::watch(server.clone(), stop_http.clone()));
            tokio::spawn(ocpp.clone().accept(
                listener,
                Entry {
                    tls: Some(server),
                    proxied: config.tls.proxy_protocol,
                },
                ocpp_sockets.clone(),
                sessions.clone(),
                stop_accepting.clone(),
            ))
        });
        let accept_task = tokio::spawn(ocpp.clone().accept(
            ocpp_listener,
            Entry {
                tls: None,
                proxied: config.listener.proxy_protocol,
            },
            ocpp_sockets,
            sessions.clone(),
            stop_accepting.clone(),
        ));
        match credentials {
            Some(Credentials::File(store)) => {
                auth_metrics.records(store.len());
                info!(file = %store.path().display(), records = store.len(), "charge point credentials loaded");
                background.spawn(crate::auth::reload::watch(
                    store,
                    config.auth.reload_interval,
                    auth_metrics,
                    stop_http.clone(),
                ));
            }
            Some(Credentials::Redis(store)) => {
                auth_metrics.records(store.len());
                info!(records = store.len(), "charge point credentials loaded from Redis");
                background.spawn(store.watch(
                    config.auth.reload_interval,
                    auth_metrics,
                    stop_http.clone(),
                ));
            }
            None => warn!("no auth.credentials_file: charge points are not authenticated (security profile 0); anyone who knows a charge point id can connect as it"),
        }
        let cluster_node = match cluster {
            Some((node, listener)) => {
                info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), node = %node.node(), "cluster internal API bound");
                let limits = HttpLimits {
                    max_connections: config.admin.max_connections.max(256),
                    probe_places: 0,
                    idle_timeout: config.admin.idle_timeout.max(Duration::from_secs(60)),
                    max_body_bytes: ADMIN_MAX_BODY_BYTES,
                };
                let state = Arc::new(InternalState {
                    cluster: node.clone(),
                    commander: commander.clone(),
                });
                background.spawn(http_server::serve(
                    listener,
                    None,
                    crate::cluster::internal::router(state),
                    limits,
                    HttpListener::Internal,
                    http_metrics.clone(),
                    stop_http.clone(),
                ));
                background.spawn(node.clone().maintain(stop_http.clone()));
                Some(node)
            }
            None => None,
        };
        let mut command_task = None;
        if let Some(bus) = &bus {
            background.spawn(bus.clone().monitor(stop_bus.clone()));
            if let Some(replies) = replies {
                background.spawn(kafka::replies::consume(
                    replies,
                    bus.config().clone(),
                    stop_bus.clone(),
                ));
            }
            let consumer = Arc::new(CommandConsumer {
                commander,
                bus: bus.clone(),
                metrics,
                node_id: config.node_id.clone(),
                drain_timeout: config.shutdown.drain_time + config.session.call_timeout,
                cluster: cluster_node.clone(),
            });
            command_task = Some(tokio::spawn(kafka::commands::run(
                consumer,
                stop_commands.clone(),
            )));
        }
        background.close();

        shutdown.await;
        info!("shutdown requested; draining");
        lifecycle.start_draining();
        // No new commands; those in progress end with their sessions below.
        stop_commands.cancel();
        stop_accepting.cancel();
        let _ = accept_task.await;
        if let Some(task) = tls_accept_task {
            let _ = task.await;
        }
        lifecycle.set_listening(false);
        sessions.close();
        ocpp.drain(config.shutdown.drain_time).await;
        if tokio::time::timeout(config.shutdown.drain_time + SHUTDOWN_GRACE, sessions.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = sessions.len(),
                "sessions still open after the drain time"
            );
        }
        if let Some(task) = command_task {
            let _ = task.await;
        }
        sink.flush().await;
        stop_bus.cancel();
        stop_http.cancel();
        background.wait().await;
        info!("shutdown complete");
    }
}

/// What tests and embedders may look at while the gateway runs.
#[derive(Clone)]
pub struct Probe {
    sessions: Arc<Registry>,
    scrape: Arc<Scrape>,
    bus: Option<Arc<KafkaBus>>,
}

impl Probe {
    /// How many charge points are connected.
    pub fn connections(&self) -> usize {
        self.sessions.len()
    }

    /// The name of every registered metric family (counters without `_total`).
    pub fn metric_names(&self) -> Vec<&'static str> {
        self.scrape.registry.names().to_vec()
    }

    /// The Kafka bus, when Kafka is on.
    pub fn bus(&self) -> Option<Arc<KafkaBus>> {
        self.bus.clone()
    }
}

async fn bind(what: &'static str, address: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind {
            what,
            address,
            source,
        })
}

#[cfg(test)]
mod tests {
    /// Every idle connection pays for its task's future for as long as it lives: a field
    /// kept twice or a temporary held across an await shows here first (it cost 600
    /// bytes per connection once). The bound is the size measured, rounded up.
    #[tokio::test]
    async fn a_connections_future_stays_small() {
        let mut config = crate::Config::default();
        config.listener.address = "127.0.0.1:0".parse().unwrap();
        config.admin.address = "127.0.0.1:0".parse().unwrap();
        config.metrics.address = "127.0.0.1:0".parse().unwrap();
        config.events.output = crate::config::EventOutput::None;
        let gateway = super::Gateway::bind(config).await.unwrap();
        let _client = tokio::net::TcpStream::connect(gateway.ocpp_address())
            .await
            .unwrap();
        let (stream, peer) = gateway.ocpp_listener.accept().await.unwrap();
        let entry = crate::listener::Entry::default();
        let connection = gateway.ocpp.serve_connection(stream, peer, &entry);
        let size = std::mem::size_of_val(&connection);
        assert!(size <= 1024, "a connection's future takes {size} bytes");
    }
}
