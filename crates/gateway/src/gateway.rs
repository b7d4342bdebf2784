//! The gateway as a whole: shared state, start-up, the accept loop and graceful shutdown.

use std::{
    collections::HashSet,
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use ocpp::{Leniency, SchemaSet};
use tokio::{
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tokio_tungstenite::tungstenite::{http::Request, protocol::WebSocketConfig};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::{
    admin,
    config::{Config, EventOutput},
    event::Event,
    handshake::{Accepted, HandshakePolicy, Refusal},
    http_server::{self, HttpLimits},
    kafka::{self, replies::ReplyRouter, KafkaBus, KafkaSink},
    labels::{ConnectionAttempt, DisconnectReason, HttpListener},
    metrics::Metrics,
    registry::Registry,
    responder::LocalResponder,
    session::{self, ConnectionInfo, SessionHandle},
    sink::{
        embedded::{EmbeddedOptions, EmbeddedSink, Output},
        ring::EventRing,
        ComponentHealth, Delivery, EventSink, SinkError,
    },
    upgrade::UpgradeError,
};

/// How long shutdown waits for sessions beyond the drain time before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// State every part of the gateway shares.
pub struct Shared {
    /// The configuration in force.
    pub config: Config,
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// Per-charge-point debug traces.
    pub debug_traces: crate::telemetry::debug_trace::DebugTraces,
    /// Compiled OCPP schemas.
    pub schemas: SchemaSet,
    /// The local responder.
    pub responder: LocalResponder,
    /// Where events go.
    pub sink: Arc<dyn EventSink>,
    /// The most recent events.
    pub ring: EventRing,
    /// Live sessions.
    pub registry: Registry,
    /// Whether the OCPP listener is accepting.
    pub listening: AtomicBool,
    /// Whether shutdown has begun.
    pub draining: AtomicBool,
    /// The Kafka bus, when configured.
    pub bus: Option<Arc<KafkaBus>>,
    /// Waits for backend replies (used while the bus is on).
    pub replies: Arc<ReplyRouter>,
    durable_actions: HashSet<String>,
    backend_actions: HashSet<String>,
}

impl Shared {
    /// Whether `action`'s CALLRESULT waits for its event to be durable.
    pub fn is_durable(&self, action: &str) -> bool {
        self.durable_actions.contains(action)
    }

    /// Whether `action` is answered by the backend (Kafka on and the action configured).
    pub fn is_backend_answered(&self, action: &str) -> bool {
        self.bus.is_some() && self.backend_actions.contains(action)
    }

    /// Records `event` in the ring and submits it to the sink (waiting for room).
    pub async fn publish(&self, event: Event) -> Result<Delivery, SinkError> {
        let event = Arc::new(event);
        self.ring.push(event.clone());
        self.sink.submit(event).await
    }

    /// Publishes an event nobody waits on; a failure is logged.
    pub async fn publish_quietly(&self, event: Event) {
        if let Err(e) = self.publish(event).await {
            crate::warn_limited!(error = %e, "event not stored");
        }
    }

    /// Whether the gateway should receive traffic, and why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("shutting down".to_owned());
        }
        if !self.listening.load(Ordering::Relaxed) {
            return Err("OCPP listener not bound".to_owned());
        }
        // The sink first: with Kafka it is the broker, and the reply consumer below waits
        // for the same broker, so its state would hide the real cause.
        let sink = self.sink.health();
        if sink.status == "down" {
            return Err(format!(
                "event sink down: {}",
                sink.detail.unwrap_or_default()
            ));
        }
        if self.bus.is_some() && !self.backend_actions.is_empty() && !self.replies.is_assigned() {
            return Err("backend reply consumer not assigned yet".to_owned());
        }
        Ok(())
    }

    /// Updates the gauges that are read rather than counted, just before a scrape.
    pub fn refresh_gauges(&self) {
        self.metrics.ready.set(i64::from(self.readiness().is_ok()));
        if let Some(bus) = &self.bus {
            self.metrics.kafka_in_flight.set(bus.in_flight() as i64);
            self.metrics
                .kafka_in_flight_limit
                .set(bus.config().max_in_flight as i64);
            self.metrics
                .kafka_connected
                .set(i64::from(bus.readiness().is_ok()));
        }
    }

    /// The event sink's state.
    pub fn sink_health(&self) -> ComponentHealth {
        self.sink.health()
    }
}

/// A gateway whose listeners are bound, ready to run.
pub struct Gateway {
    shared: Arc<Shared>,
    ocpp_listener: TcpListener,
    admin_listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    ocpp_sockets: SocketBudget,
}

/// Health probes keep this many of the admin listener's places.
const ADMIN_PROBE_PLACES: usize = 4;
/// Largest admin API request body (a command with its payload), in bytes.
const ADMIN_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest request body the metrics listener reads (scrapes have none).
const METRICS_MAX_BODY_BYTES: usize = 16 * 1024;
/// Open files the process needs besides sockets: the events file, log output, Kafka's
/// broker connections, the runtime's own descriptors.
const OTHER_FILES: u64 = 64;

/// How many charge point sockets (upgraded or still in their handshake) may be open at
/// once, so that charge points can never take the file descriptors that the admin and
/// metrics listeners, and the rest of the process, need.
#[derive(Debug, Clone)]
struct SocketBudget {
    open: Arc<std::sync::atomic::AtomicUsize>,
    limit: usize,
}

/// One charge point socket counted against the budget, for as long as it is open.
struct SocketSlot(Arc<std::sync::atomic::AtomicUsize>);

impl SocketBudget {
    /// The budget under the process's open-file limit (raised to its hard limit first),
    /// less what the admin and metrics listeners and the rest of the process may hold.
    fn from_open_file_limit(config: &Config) -> SocketBudget {
        let limit = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(files) => {
                let reserve = OTHER_FILES
                    + config.admin.max_connections as u64
                    + config.metrics.max_connections as u64;
                let limit = files.saturating_sub(reserve) as usize;
                if limit < config.listener.max_connections {
                    warn!(
                        open_file_limit = files,
                        reserved = reserve,
                        max_connections = config.listener.max_connections,
                        "the open-file limit leaves room for fewer charge point sockets than listener.max_connections; raise the limit (ulimit -n)"
                    );
                }
                limit
            }
            Err(e) => {
                warn!(error = %e, "the open-file limit cannot be read; charge point sockets are not budgeted");
                usize::MAX
            }
        };
        SocketBudget {
            open: Default::default(),
            limit,
        }
    }

    /// A slot for a newly accepted socket, or `None` when the budget is spent.
    fn take(&self) -> Option<SocketSlot> {
        let taken = self.open.fetch_add(1, Ordering::Relaxed);
        let slot = SocketSlot(self.open.clone());
        (taken < self.limit).then_some(slot)
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
}

impl Gateway {
    /// Compiles schemas, opens the configured event sink and binds both listeners.
    pub async fn bind(config: Config) -> Result<Gateway, StartError> {
        let output = match config.events.output {
            EventOutput::Stdout => Output::Stdout,
            EventOutput::File => Output::File(config.events.file.clone().unwrap_or_default()),
            EventOutput::None => Output::Discard,
        };
        let metrics = new_metrics(&config);
        if config.kafka.enabled() {
            let bus = KafkaBus::new(&config.kafka, metrics.clone())?;
            let sink = Arc::new(KafkaSink::new(bus.clone()));
            return Gateway::bind_parts(config, sink, Some(bus), metrics).await;
        }
        let options = EmbeddedOptions {
            queue_capacity: config.events.queue_capacity,
            fsync: config.events.fsync,
            unready_after: config.events.unready_after,
        };
        let sink = EmbeddedSink::start(output, options, metrics.clone())
            .await
            .map_err(StartError::EventOutput)?;
        Gateway::bind_parts(config, Arc::new(sink), None, metrics).await
    }

    /// Like [`Gateway::bind`] without Kafka, with events going to `sink`.
    pub async fn bind_with_sink(
        config: Config,
        sink: Arc<dyn EventSink>,
    ) -> Result<Gateway, StartError> {
        let metrics = new_metrics(&config);
        Gateway::bind_parts(config, sink, None, metrics).await
    }

    async fn bind_parts(
        config: Config,
        sink: Arc<dyn EventSink>,
        bus: Option<Arc<KafkaBus>>,
        metrics: Arc<Metrics>,
    ) -> Result<Gateway, StartError> {
        let schemas = SchemaSet::compile(Leniency {
            timestamps_without_zone: config.validation.accept_timestamps_without_zone,
        })?;
        let ocpp_listener = bind("OCPP listener", config.listener.address).await?;
        let admin_listener = bind("admin API", config.admin.address).await?;
        let metrics_listener = match config.metrics.enabled {
            true => Some(bind("metrics", config.metrics.address).await?),
            false => None,
        };
        let ocpp_sockets = SocketBudget::from_open_file_limit(&config);
        let shared = Arc::new(Shared {
            metrics,
            debug_traces: Default::default(),
            schemas,
            responder: LocalResponder::new(&config.responder),
            sink,
            ring: EventRing::new(config.events.ring_size),
            registry: Registry::default(),
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            durable_actions: config.events.durable_actions.iter().cloned().collect(),
            backend_actions: config.backend.actions.iter().cloned().collect(),
            bus,
            replies: Arc::new(ReplyRouter::default()),
            config,
        });
        Ok(Gateway {
            shared,
            ocpp_listener,
            admin_listener,
            metrics_listener,
            ocpp_sockets,
        })
    }

    /// The bound OCPP listener address.
    pub fn ocpp_address(&self) -> SocketAddr {
        self.ocpp_listener
            .local_addr()
            .unwrap_or(self.shared.config.listener.address)
    }

    /// The bound admin API address.
    pub fn admin_address(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.shared.config.admin.address)
    }

    /// The bound metrics address, when metrics are on.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The shared state (for embedding and tests).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `shutdown` resolves, then drains: readiness goes false, no new
    /// connections, open ones closed with 1001 spread over the drain time, events flushed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Gateway {
            shared,
            ocpp_listener,
            admin_listener,
            metrics_listener,
            ocpp_sockets,
        } = self;
        info!(address = %ocpp_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "ocpp listener bound");
        info!(address = %admin_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin listener bound");
        let admin_exposed = admin_listener
            .local_addr()
            .is_ok_and(|address| !address.ip().is_loopback());
        if admin_exposed && shared.config.admin.api_token.is_none() {
            warn!("the admin API listens beyond loopback without admin.api_token: anyone who reaches it can command charge points");
        }

        let stop_accepting = CancellationToken::new();
        let stop_admin = CancellationToken::new();
        let sessions = TaskTracker::new();
        shared.listening.store(true, Ordering::Relaxed);

        let admin_limits = HttpLimits {
            max_connections: shared.config.admin.max_connections,
            probe_places: ADMIN_PROBE_PLACES,
            idle_timeout: shared.config.admin.idle_timeout,
            max_body_bytes: ADMIN_MAX_BODY_BYTES,
        };
        let admin_task = tokio::spawn(http_server::serve(
            admin_listener,
            admin::router(shared.clone()),
            admin_limits,
            HttpListener::Admin,
            shared.metrics.clone(),
            stop_admin.clone(),
        ));
        if let Some(listener) = metrics_listener {
            info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics listener bound");
            let limits = HttpLimits {
                max_connections: shared.config.metrics.max_connections,
                probe_places: 0,
                idle_timeout: shared.config.metrics.idle_timeout,
                max_body_bytes: METRICS_MAX_BODY_BYTES,
            };
            tokio::spawn(http_server::serve(
                listener,
                crate::metrics::server::router(shared.clone()),
                limits,
                HttpListener::Metrics,
                shared.metrics.clone(),
                stop_admin.clone(),
            ));
        }
        let accept_task = tokio::spawn(accept_loop(
            ocpp_listener,
            ocpp_sockets,
            shared.clone(),
            sessions.clone(),
            stop_accepting.clone(),
        ));
        let stop_commands = CancellationToken::new();
        let stop_bus = CancellationToken::new();
        let mut command_task = None;
        if let Some(bus) = &shared.bus {
            tokio::spawn(bus.clone().monitor(stop_bus.clone()));
            tokio::spawn(
                shared
                    .replies
                    .clone()
                    .consume(bus.config().clone(), stop_bus.clone()),
            );
            command_task = Some(tokio::spawn(kafka::commands::run(
                shared.clone(),
                bus.clone(),
                stop_commands.clone(),
            )));
        }

        shutdown.await;
        info!("shutdown requested; draining");
        shared.draining.store(true, Ordering::Relaxed);
        // No new commands; those in progress end with their sessions below.
        stop_commands.cancel();
        stop_accepting.cancel();
        let _ = accept_task.await;
        shared.listening.store(false, Ordering::Relaxed);
        sessions.close();
        drain_sessions(&shared).await;
        if tokio::time::timeout(
            shared.config.shutdown.drain_time + SHUTDOWN_GRACE,
            sessions.wait(),
        )
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
        shared.sink.flush().await;
        stop_bus.cancel();
        stop_admin.cancel();
        let _ = admin_task.await;
        info!("shutdown complete");
    }
}

fn new_metrics(config: &Config) -> Arc<Metrics> {
    let topics = &config.kafka.topics;
    let kafka_topics: [&str; 2] = [&topics.events, &topics.command_results];
    let kafka = config.kafka.enabled().then_some(&kafka_topics[..]);
    Metrics::new(&config.listener.subprotocols, kafka)
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

/// Closes every session with 1001, spread evenly over the drain time so that the
/// reconnecting fleet does not hit the other instances all at once.
async fn drain_sessions(shared: &Shared) {
    let handles = shared.registry.all();
    if handles.is_empty() {
        return;
    }
    let drain = shared.config.shutdown.drain_time;
    let step = drain / handles.len() as u32;
    let start = Instant::now();
    info!(
        connections = handles.len(),
        drain_seconds = drain.as_secs_f64(),
        "closing connections"
    );
    for (i, handle) in handles.iter().enumerate() {
        tokio::time::sleep_until(start + step * i as u32).await;
        handle.close(DisconnectReason::GatewayShutdown);
    }
    // A handshake that was completing when the drain began registers after the snapshot.
    for handle in shared.registry.all() {
        handle.close(DisconnectReason::GatewayShutdown);
    }
}

async fn accept_loop(
    listener: TcpListener,
    budget: SocketBudget,
    shared: Arc<Shared>,
    sessions: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(slot) = budget.take() else {
                    // Closed before reading anything: answering would need the very
                    // descriptors this keeps for the rest of the process.
                    shared
                        .metrics
                        .connection_attempt(ConnectionAttempt::AtCapacity);
                    crate::warn_limited!(%peer, limit = budget.limit, "charge point socket closed at once: the open-file budget is spent");
                    continue;
                };
                let shared = shared.clone();
                sessions.spawn(async move {
                    serve_connection(stream, peer, shared).await;
                    drop(slot);
                });
            }
            Err(e) => {
                // Usually EMFILE: back off briefly instead of spinning.
                crate::error_limited!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Whether the request comes from a charge point already connected here, which at
/// capacity may still replace its own connection.
fn replaces_own_connection(shared: &Shared, path: &str, policy: &HandshakePolicy) -> bool {
    policy
        .charge_point_id(path)
        .is_ok_and(|id| shared.registry.get(&id).is_some())
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    // Boxed: the upgrade's state is large and only needed until the handshake ends, while
    // this future lives as long as the connection (it is most of an idle connection's
    // memory otherwise).
    let Some((ws, accepted)) = Box::pin(upgrade(stream, peer, &shared)).await else {
        return;
    };
    let info = Arc::new(ConnectionInfo::new(
        accepted.charge_point_id,
        accepted.version,
        peer,
    ));
    let (handle, end) = SessionHandle::new(info.clone(), shared.config.session.call_queue_size);
    let span = info_span!(
        "session",
        charge_point_id = %info.charge_point_id,
        connection_id = %info.connection_id
    );
    if let Some(previous) = shared.registry.insert(handle) {
        span.in_scope(|| {
            info!(previous_connection_id = %previous.info.connection_id, "replacing the previous connection of this charge point")
        });
        previous.close(DisconnectReason::ReplacedByNewConnection);
    }
    session::run(ws, shared, info, end, accepted.fallback)
        .instrument(span)
        .await;
}

/// The WebSocket upgrade with the handshake policy; `None` when refused or failed (logged
/// and counted here).
async fn upgrade(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
) -> Option<(tokio_tungstenite::WebSocketStream<TcpStream>, Accepted)> {
    let _ = stream.set_nodelay(true);
    let listener_config = &shared.config.listener;
    let policy = HandshakePolicy {
        path_prefix: listener_config.path_prefix.clone(),
        supported: listener_config.subprotocols.clone(),
        fallback: listener_config.fallback_subprotocol,
        max_id_length: listener_config.max_charge_point_id_length,
    };
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(listener_config.read_buffer_size)
        .write_buffer_size(0)
        // Only a peer that does not read lets frames pile up here; past this bound a
        // write fails and the session ends, instead of memory growing.
        .max_write_buffer_size(listener_config.max_message_size.max(1 << 20) * 2)
        .max_message_size(Some(listener_config.max_message_size))
        .max_frame_size(Some(listener_config.max_message_size));
    let decide = |request: &Request<()>| {
        if shared.draining.load(Ordering::Relaxed) {
            Err(Refusal::ShuttingDown)
        } else if shared.registry.len() >= listener_config.max_connections
            && !replaces_own_connection(shared, request.uri().path(), &policy)
        {
            Err(Refusal::AtCapacity)
        } else {
            policy.negotiate(request)
        }
    };
    let upgraded = tokio::time::timeout(
        listener_config.handshake_timeout,
        crate::upgrade::upgrade(stream, peer, ws_config, decide),
    )
    .await;
    let attempt = |attempt| shared.metrics.connection_attempt(attempt);
    match upgraded {
        Ok(Ok((ws, accepted))) => {
            attempt(ConnectionAttempt::Accepted);
            Some((ws, accepted))
        }
        Ok(Err(UpgradeError::Refused(refusal))) => {
            attempt(refusal.attempt());
            info!(%peer, reason = refusal.label(), error = %refusal, "connection refused");
            None
        }
        Ok(Err(UpgradeError::Io(e))) => {
            attempt(ConnectionAttempt::HandshakeFailed);
            debug!(%peer, error = %e, "WebSocket handshake failed");
            None
        }
        Err(_) => {
            attempt(ConnectionAttempt::HandshakeTimeout);
            debug!(%peer, "WebSocket handshake timed out");
            None
        }
    }
}
