//! The OCPP listener: accepts charge point sockets within the open-file budget, runs the
//! WebSocket handshake under the handshake policy, registers each session, and hands it
//! to the pipeline until it ends.

pub mod config;
pub mod limits;
pub mod stream;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use futures_util::FutureExt;
use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::Instant,
};
use tokio_tungstenite::{
    tungstenite::{
        http::{self, Request},
        protocol::WebSocketConfig,
    },
    WebSocketStream,
};
use tokio_util::{either::Either, sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, info_span, Instrument};

pub use self::config::ListenerConfig;
pub use self::limits::{AddressLimit, SocketBudget};

use self::stream::TcpOrTls;
use crate::{
    auth::{Attempt, Authenticator, Denied, Transport},
    handshake::{Accepted, HandshakePolicy, Refusal},
    health::Lifecycle,
    labels::SecurityEventKind,
    labels::{ConnectionAttempt, DisconnectReason, HandshakeState},
    metrics::Metrics,
    pipeline::Pipeline,
    proxy_protocol::{self, ProxyError},
    registry::{Ownership, Registry},
    session::{self, ConnectionInfo, SessionContext, SessionEnd, SessionHandle},
    tls::{ClientCertificate, TlsFailure, TlsServer},
    token_bucket::TokenBucket,
    upgrade::UpgradeError,
};

/// What every charge point connection needs from the rest of the gateway.
pub struct OcppListener {
    /// The `[listener]` settings.
    pub config: ListenerConfig,
    /// The sessions of this instance.
    pub sessions: Arc<Registry>,
    /// Whether shutdown has begun (handshakes are then refused).
    pub lifecycle: Arc<Lifecycle>,
    /// The traffic metrics.
    pub metrics: Arc<Metrics>,
    /// Where opened and closed connections are reported.
    pub pipeline: Arc<Pipeline>,
    /// What every session shares.
    pub sessions_context: Arc<SessionContext<Pipeline>>,
    /// Who may connect as which charge point.
    auth: Arc<Authenticator>,
    /// Sockets per source address.
    addresses: AddressLimit,
    /// Places for handshakes in progress (`listener.max_handshakes`); a socket waits for
    /// one, within its handshake deadline.
    handshakes: Semaphore,
    /// Who may connect, and with which version.
    policy: HandshakePolicy,
    /// The WebSocket limits of every connection.
    ws_config: WebSocketConfig,
    /// The cluster registry, which learns of each connection here.
    ownership: Option<Arc<dyn Ownership>>,
}

impl OcppListener {
    /// The listener of `config`; its limits, handshake policy and WebSocket settings are
    /// derived from it here, once.
    pub fn new(
        config: ListenerConfig,
        sessions: Arc<Registry>,
        lifecycle: Arc<Lifecycle>,
        metrics: Arc<Metrics>,
        pipeline: Arc<Pipeline>,
        sessions_context: Arc<SessionContext<Pipeline>>,
        auth: Arc<Authenticator>,
    ) -> OcppListener {
        let policy = HandshakePolicy {
            path_prefix: config.path_prefix.clone(),
            supported: config.subprotocols.clone(),
            fallback: config.fallback_subprotocol,
            max_id_length: config.max_charge_point_id_length,
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(config.read_buffer_size)
            .write_buffer_size(0)
            // Only a peer that does not read lets frames pile up here; past this bound a
            // write fails and the session ends, instead of memory growing.
            .max_write_buffer_size(config.max_message_size.max(1 << 20) * 2)
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_message_size));
        OcppListener {
            addresses: AddressLimit::new(config.max_connections_per_address),
            handshakes: Semaphore::new(config.max_handshakes),
            policy,
            ws_config,
            config,
            sessions,
            lifecycle,
            metrics,
            pipeline,
            sessions_context,
            auth,
            ownership: None,
        }
    }

    /// The same listener, claiming each connection in a cluster registry after its
    /// handshake and releasing it when it ends.
    pub fn with_ownership(mut self, ownership: Arc<dyn Ownership>) -> OcppListener {
        self.ownership = Some(ownership);
        self
    }

    /// Accepts charge points on `listener` until `stop`; each connection is a task on
    /// `tasks`. With `entry.proxied`, each connection begins with a PROXY protocol header;
    /// with `entry.tls`, then with a TLS handshake (`wss://`).
    pub async fn accept(
        self: Arc<Self>,
        listener: TcpListener,
        entry: Entry,
        budget: SocketBudget,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) {
        let mut rate = TokenBucket::new(self.config.accept_rate);
        loop {
            // Over the accept rate, sockets wait in the kernel's accept queue: a storm is
            // spread out instead of refused.
            let wait = rate.wait_for_one();
            if !wait.is_zero() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = budget.take() else {
                        // Closed before reading anything: answering would need the very
                        // descriptors this keeps for the rest of the process.
                        self.metrics
                            .connection_attempt(ConnectionAttempt::AtCapacity);
                        crate::warn_limited!(%peer, limit = budget.limit, "charge point socket closed at once: the open-file budget is spent");
                        continue;
                    };
                    if entry.proxied && !self.config.trusts_proxy(peer.ip()) {
                        self.metrics
                            .connection_attempt(ConnectionAttempt::UntrustedProxy);
                        crate::warn_limited!(%peer, "socket closed at once: a PROXY protocol listener only takes listener.trusted_proxies");
                        continue;
                    }
                    // Behind a proxy the socket's address is the proxy's: the client's is
                    // counted once its PROXY header is read.
                    let address_slot = match entry.proxied {
                        true => None,
                        false => match self.addresses.take(peer.ip()) {
                            Some(address_slot) => address_slot,
                            None => {
                                // Closed at once too: a flood from one address costs no
                                // handshake.
                                self.address_limit_hit(peer);
                                continue;
                            }
                        },
                    };
                    let this = self.clone();
                    let entry = entry.clone();
                    tasks.spawn(async move {
                        this.serve_connection(stream, peer, &entry).await;
                        drop((slot, address_slot));
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

    /// Closes every session with 1001, spread evenly over `drain` so that the
    /// reconnecting fleet does not hit the other instances all at once.
    pub async fn drain(&self, drain: Duration) {
        let handles = self.sessions.all();
        if handles.is_empty() {
            return;
        }
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
        for handle in self.sessions.all() {
            handle.close(DisconnectReason::GatewayShutdown);
        }
    }

    /// Whether the request comes from a charge point already connected here, which at
    /// capacity may still replace its own connection.
    fn replaces_own_connection(&self, path: &str) -> bool {
        self.policy
            .charge_point_id(path)
            .is_ok_and(|id| self.sessions.get(&id).is_some())
    }

    fn address_limit_hit(&self, peer: SocketAddr) {
        self.metrics
            .connection_attempt(ConnectionAttempt::AddressLimit);
        crate::warn_limited!(%peer, limit = self.config.max_connections_per_address, "charge point socket closed at once: too many from its address");
        self.auth.events().report(
            SecurityEventKind::LimitHit,
            &peer.ip().to_string(),
            peer.ip(),
            "address_limit",
            None,
        );
    }

    pub(crate) async fn serve_connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        entry: &Entry,
    ) {
        // Boxed: the upgrade's state is large and only needed until the handshake ends,
        // while this future lives as long as the connection (it is most of an idle
        // connection's memory otherwise).
        let Some(Upgraded {
            ws,
            accepted,
            peer,
            address_slot: _address_slot,
        }) = Box::pin(self.upgrade(stream, peer, entry)).await
        else {
            return;
        };
        let info = Arc::new(
            ConnectionInfo::new(accepted.charge_point_id, accepted.version, peer)
                .with_bound_serial_number(accepted.bound_serial_number),
        );
        let (handle, end) =
            SessionHandle::new(info.clone(), self.sessions_context.config.call_queue_size);
        let span = info_span!(
            "session",
            charge_point_id = %info.charge_point_id,
            connection_id = %info.connection_id
        );
        if let Some(previous) = self.sessions.insert(handle) {
            span.in_scope(|| {
                info!(previous_connection_id = %previous.info.connection_id, "replacing the previous connection of this charge point")
            });
            previous.close(DisconnectReason::ReplacedByNewConnection);
        }
        self.connection(ws, info, end, accepted.fallback)
            .instrument(span)
            .await;
    }

    /// The life of an upgraded connection: opened, the session, unregistered, closed.
    ///
    /// Chained rather than written as an `async` block: awaiting a future that a block
    /// owns keeps it twice in the block's state (the captured value and the one being
    /// awaited), and this state is paid by every connection for its whole life. The
    /// session itself is boxed by `session::run`.
    fn connection(
        &self,
        ws: WebSocketStream<TcpOrTls>,
        info: Arc<ConnectionInfo>,
        end: SessionEnd,
        fallback: bool,
    ) -> impl Future<Output = ()> + Send + '_ {
        let session = session::run(ws, self.sessions_context.clone(), info.clone(), end);
        // Claimed before the opened event, which carries the claim's epoch.
        let claim = match &self.ownership {
            Some(ownership) => ownership.claim(info.clone()),
            None => futures_util::future::ready(()).boxed(),
        };
        let opened_info = info.clone();
        claim
            .then(move |()| self.pipeline.opened(opened_info, fallback))
            .then(move |()| session)
            .then(move |ended| {
                // Unregistered before the closed event, so that whoever sees the event also
                // sees the charge point gone (unless a newer connection already took its
                // place).
                self.sessions
                    .remove(&info.charge_point_id, &info.connection_id);
                let release = match &self.ownership {
                    Some(ownership) => ownership.release(info.clone()),
                    None => futures_util::future::ready(()).boxed(),
                };
                release.then(move |()| self.pipeline.closed(info, ended))
            })
    }

    /// The PROXY header (on a proxied entry), the TLS handshake (with TLS), then the
    /// WebSocket upgrade with the handshake policy and authentication; `None` when refused
    /// or failed (logged and counted here).
    async fn upgrade(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        entry: &Entry,
    ) -> Option<Upgraded> {
        let _ = stream.set_nodelay(true);
        let socket_peer = peer;
        // The deadline covers the wait for a handshake place, the PROXY header, the TLS
        // handshake and authentication too: a socket that gets none in time is dropped like
        // one that is too slow to shake hands.
        let upgraded = tokio::time::timeout(self.config.handshake_timeout, async {
            let waiting = GaugeGuard::new(self.metrics.handshakes(HandshakeState::Waiting));
            let place = self.handshakes.acquire().await;
            drop(waiting);
            let _running = GaugeGuard::new(self.metrics.handshakes(HandshakeState::Running));
            let (peer, proxied_tls, address_slot) = match entry.proxied {
                false => (peer, None, None),
                true => {
                    let header = proxy_protocol::read(&mut stream)
                        .await
                        .map_err(Failed::Proxy)?;
                    let client = header.source.unwrap_or(peer);
                    let slot = self
                        .addresses
                        .take(client.ip())
                        .ok_or(Failed::AddressLimit(client))?;
                    (client, header.tls, slot)
                }
            };
            let (stream, certificate) = match (&entry.tls, proxied_tls) {
                (Some(tls), _) => {
                    let (stream, certificate) = tls
                        .accept(stream)
                        .await
                        .map_err(|failure| Failed::Tls(failure, peer))?;
                    (Either::Right(Box::new(stream)), Some(certificate))
                }
                // TLS ended at a trusted balancer, which verified the certificate.
                (None, Some(tls)) => (
                    Either::Left(stream),
                    Some(tls.certificate_verified.then(|| ClientCertificate {
                        common_names: tls.common_name.into_iter().collect(),
                        organizations: Vec::new(),
                    })),
                ),
                (None, None) => (Either::Left(stream), None),
            };
            let transport = match &certificate {
                None => Transport::Plain,
                Some(certificate) => Transport::Tls {
                    certificate: certificate.as_ref(),
                },
            };
            let upgraded = crate::upgrade::upgrade(stream, peer, self.ws_config, |request| {
                self.decide(request, peer, transport)
            })
            .await
            .map_err(|e| Failed::Upgrade(e, peer));
            drop(place);
            upgraded.map(|(ws, accepted)| Upgraded {
                ws,
                accepted,
                peer,
                address_slot,
            })
        })
        .await;
        let attempt = |attempt| self.metrics.connection_attempt(attempt);
        match upgraded {
            Ok(Ok(upgraded)) => {
                attempt(ConnectionAttempt::Accepted);
                Some(upgraded)
            }
            Ok(Err(Failed::Upgrade(UpgradeError::Refused(refusal), peer))) => {
                attempt(refusal.attempt());
                info!(%peer, reason = refusal.label(), error = %refusal, "connection refused");
                None
            }
            Ok(Err(Failed::Upgrade(UpgradeError::Io(e), peer))) => {
                attempt(ConnectionAttempt::HandshakeFailed);
                debug!(%peer, error = %e, "WebSocket handshake failed");
                None
            }
            Ok(Err(Failed::Proxy(e))) => {
                attempt(ConnectionAttempt::BadProxyHeader);
                crate::warn_limited!(peer = %socket_peer, error = %e, "connection closed: no valid PROXY protocol header");
                None
            }
            Ok(Err(Failed::AddressLimit(client))) => {
                self.address_limit_hit(client);
                None
            }
            Ok(Err(Failed::Tls(TlsFailure::CertificateRefused(reason), peer))) => {
                attempt(ConnectionAttempt::CertificateRefused);
                crate::warn_limited!(%peer, %reason, "client certificate refused");
                self.auth.events().report(
                    SecurityEventKind::CertificateRefused,
                    &peer.ip().to_string(),
                    peer.ip(),
                    "certificate_not_verified",
                    None,
                );
                None
            }
            Ok(Err(Failed::Tls(TlsFailure::Handshake(reason), peer))) => {
                attempt(ConnectionAttempt::TlsHandshakeFailed);
                debug!(%peer, %reason, "TLS handshake failed");
                None
            }
            Err(_) => {
                attempt(ConnectionAttempt::HandshakeTimeout);
                debug!(peer = %socket_peer, "handshake timed out");
                None
            }
        }
    }

    /// Whether the upgrade `request` may proceed: the cheap refusals first;
    /// authentication, which may hash a password, last.
    async fn decide(
        &self,
        request: Request<()>,
        peer: SocketAddr,
        transport: Transport<'_>,
    ) -> Result<Accepted, Refusal> {
        let accepted = if self.lifecycle.is_draining() {
            Err(Refusal::ShuttingDown)
        } else if self.sessions.len() >= self.config.max_connections
            && !self.replaces_own_connection(request.uri().path())
        {
            Err(Refusal::AtCapacity)
        } else {
            self.policy.negotiate(&request)
        }?;
        let authorization: Vec<&[u8]> = request
            .headers()
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .map(|value| value.as_bytes())
            .collect();
        let attempt = Attempt {
            charge_point_id: &accepted.charge_point_id,
            authorization: &authorization,
            address: peer.ip(),
            transport,
        };
        match self.auth.authenticate(attempt).await {
            Ok(profile) => {
                let mut accepted = accepted;
                if profile == crate::auth::SecurityProfile::TlsClientCertificate {
                    if let Transport::Tls { certificate } = transport {
                        accepted.bound_serial_number = self.auth.bound_serial_number(certificate);
                    }
                }
                Ok(accepted)
            }
            Err(Denied {
                retry_after: Some(wait),
                ..
            }) => Err(Refusal::AuthBackoff {
                retry_after_seconds: wait.as_secs_f64().ceil().max(1.0) as u64,
            }),
            Err(Denied { .. }) => Err(Refusal::Unauthorized),
        }
    }
}

/// How a handshake failed before a session existed (with the client's address, once
/// known).
enum Failed {
    /// No valid PROXY header.
    Proxy(ProxyError),
    /// Too many connections from the client named by the PROXY header.
    AddressLimit(SocketAddr),
    /// The TLS handshake.
    Tls(TlsFailure, SocketAddr),
    /// The WebSocket upgrade (or its refusal).
    Upgrade(UpgradeError, SocketAddr),
}

/// An upgraded connection, its client, and the client's place under the address limit.
struct Upgraded {
    ws: WebSocketStream<TcpOrTls>,
    accepted: Accepted,
    peer: SocketAddr,
    address_slot: Option<limits::AddressSlot>,
}

/// How connections arrive at one listening socket.
#[derive(Clone, Default)]
pub struct Entry {
    /// TLS (`wss://`), ended here.
    pub tls: Option<Arc<TlsServer>>,
    /// A PROXY protocol v2 header first (from `listener.trusted_proxies` only).
    pub proxied: bool,
}

/// Counts one in a gauge while it lives (a handshake cut short by its deadline too).
struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(gauge: Gauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
