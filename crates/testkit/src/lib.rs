//! The test harness every Rust test of the gateway and the simulator uses: the real
//! gateway in process on 127.0.0.1:0 ([`TestGateway`]), a real WebSocket client ([`Cp`]),
//! a real HTTP client for the admin API and the metrics endpoint, and a real
//! Kafka-protocol broker process ([`broker::Broker`]).

pub mod broker;
pub mod pki;
pub mod redis;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use charge_point_gateway::{
    config::EventOutput,
    event::Event,
    sink::{ComponentHealth, Delivery, EventSink, SinkError},
    Config, Gateway, Probe,
};
use futures_util::{future::BoxFuture, FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::{
    net::TcpStream,
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http, protocol::CloseFrame, Message},
    WebSocketStream,
};

/// Bound on every single wait in a test.
pub const STEP: Duration = Duration::from_secs(5);

/// A gateway running in this process on 127.0.0.1:0, stopped when dropped.
pub struct TestGateway {
    /// The OCPP listener.
    pub ocpp: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
    /// The metrics listener, when metrics are on.
    pub metrics: Option<SocketAddr>,
    /// The TLS listener, when TLS is on.
    pub tls: Option<SocketAddr>,
    /// The running gateway's own view (connections, metric names, the Kafka bus).
    pub probe: Probe,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    http: reqwest::Client,
}

/// The configuration every test starts from: every listener on 127.0.0.1:0, no event
/// output, a short drain.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.listener.address = "127.0.0.1:0".parse().unwrap();
    config.admin.address = "127.0.0.1:0".parse().unwrap();
    config.metrics.address = "127.0.0.1:0".parse().unwrap();
    config.tls.address = "127.0.0.1:0".parse().unwrap();
    config.events.output = EventOutput::None;
    config.shutdown.drain_time = Duration::from_millis(200);
    config.node_id = "test-node".into();
    config
}

impl TestGateway {
    /// Starts a gateway with [`test_config`].
    pub async fn start() -> TestGateway {
        Self::start_with(|_| {}).await
    }

    /// Starts a gateway with [`test_config`] changed by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestGateway {
        init_test_logging();
        let mut config = test_config();
        adjust(&mut config);
        config.validate().expect("test config is valid");
        Self::launch(Gateway::bind(config).await.expect("gateway binds")).await
    }

    /// Starts a gateway whose events go to `sink` instead of the configured output.
    pub async fn start_with_sink(
        adjust: impl FnOnce(&mut Config),
        sink: Arc<dyn EventSink>,
    ) -> TestGateway {
        let mut config = test_config();
        adjust(&mut config);
        Self::launch(
            Gateway::bind_with_sink(config, sink)
                .await
                .expect("gateway binds"),
        )
        .await
    }

    async fn launch(gateway: Gateway) -> TestGateway {
        let ocpp = gateway.ocpp_address();
        let admin = gateway.admin_address();
        let metrics = gateway.metrics_address();
        let tls = gateway.tls_address();
        let probe = gateway.probe();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.run(async move {
            let _ = stopped.await;
        }));
        TestGateway {
            ocpp,
            admin,
            metrics,
            tls,
            probe,
            stop: Some(stop),
            task: Some(task),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("gateway stops in time")
                .expect("gateway task did not panic");
        }
    }

    /// The WebSocket URL of charge point `id`.
    pub fn url(&self, id: &str) -> String {
        format!("ws://{}/ocpp/{}", self.ocpp, id)
    }

    /// Connects as `id` (OCPP 1.6) with a 4 KiB receive buffer, for a client that will
    /// never read: whatever the gateway writes soon fills the buffers on both sides.
    pub async fn connect_without_reading(&self, id: &str) -> WebSocketStream<TcpStream> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(self.ocpp).await.unwrap();
        let mut request = self.url(id).into_client_request().unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "ocpp1.6".parse().unwrap());
        let (ws, _) = tokio_tungstenite::client_async(request, stream)
            .await
            .unwrap();
        ws
    }

    /// Connects as `id` offering `protocols`; panics when refused.
    pub async fn connect(&self, id: &str, protocols: &[&str]) -> Cp {
        let (cp, _) = self
            .try_connect(id, protocols)
            .await
            .expect("handshake accepted");
        cp
    }

    /// Connects, returning the HTTP status on refusal.
    pub async fn try_connect(
        &self,
        id: &str,
        protocols: &[&str],
    ) -> Result<(Cp, Option<String>), http::StatusCode> {
        connect_url(&self.url(id), protocols).await
    }

    /// Connects as `id` (OCPP 1.6) with HTTP Basic credentials `username:password`:
    /// the client, or the refusal's status and headers.
    pub async fn connect_basic(
        &self,
        id: &str,
        username: &str,
        password: &[u8],
    ) -> Result<Cp, (http::StatusCode, http::HeaderMap)> {
        self.connect_with_authorization(
            id,
            "ocpp1.6",
            Some(basic_authorization(username, password)),
        )
        .await
    }

    /// Connects as `id` offering `protocol`, with an `Authorization` header when given.
    pub async fn connect_with_authorization(
        &self,
        id: &str,
        protocol: &str,
        authorization: Option<String>,
    ) -> Result<Cp, (http::StatusCode, http::HeaderMap)> {
        let request = upgrade_request(&self.url(id), protocol, authorization);
        let stream = tcp_to(&request).await;
        handshake(request, stream).await.map(|(cp, _)| cp)
    }

    /// Connects as `id` offering `protocol` to the TLS listener with `client`, with an
    /// `Authorization` header when given.
    pub async fn connect_tls(
        &self,
        id: &str,
        protocol: &str,
        authorization: Option<String>,
        client: &pki::TlsClient<'_>,
    ) -> Result<Cp, Refused> {
        let address = self.tls.expect("TLS listener on");
        let stream = client.connect(address).await.map_err(Refused::Tls)?;
        let url = format!("wss://localhost:{}/ocpp/{id}", address.port());
        let request = upgrade_request(&url, protocol, authorization);
        // With TLS 1.3 the server checks a client certificate after the client finished
        // its handshake: a refusal then arrives as an alert on the first read, during the
        // WebSocket handshake.
        let stream: Box<dyn Io> = Box::new(stream);
        match tokio::time::timeout(STEP, tokio_tungstenite::client_async(request, stream)).await {
            Err(_) => panic!("handshake timed out"),
            Ok(Ok((ws, _))) => Ok(Cp { ws }),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                Err(Refused::Http(response.status()))
            }
            Ok(Err(e)) => Err(Refused::Tls(e.to_string())),
        }
    }

    /// `ocppgw_connection_attempts_total{result}`.
    pub async fn connection_attempts(&self, result: &str) -> f64 {
        self.sample(&format!(
            "ocppgw_connection_attempts_total{{result=\"{result}\"}}"
        ))
        .await
        .expect("a connection attempt result")
    }

    /// `ocppgw_auth_results_total{profile, result}`.
    pub async fn auth_results(&self, profile: &str, result: &str) -> f64 {
        self.sample(&format!(
            "ocppgw_auth_results_total{{profile=\"{profile}\",result=\"{result}\"}}"
        ))
        .await
        .expect("an authentication result")
    }

    /// Waits until `series` is at least `value`: for what is counted just after the event
    /// a test saw (a disconnect after its close frame, a reload observable only through
    /// its metric). Polled, bounded by [`STEP`].
    pub async fn wait_for_series(&self, series: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + STEP;
        while self.sample(series).await.unwrap_or(0.0) < value {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} never reached {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A request on the admin API: the status and the JSON body (`null` when empty).
    pub async fn admin_request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("http://{}{}", self.admin, path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, body)
    }

    /// `GET` on the admin API: the status and the JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("http://{}{}", self.admin, path))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// `DELETE` on the admin API: the status and the JSON body.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .delete(format!("http://{}{}", self.admin, path))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// `POST` of `body` on the admin API: the status and the JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("http://{}{}", self.admin, path))
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// The OpenMetrics text of a scrape.
    pub async fn scrape(&self) -> String {
        let address = self.metrics.expect("metrics enabled");
        let response = self
            .http
            .get(format!("http://{address}/metrics"))
            .header("accept", "application/openmetrics-text; version=1.0.0")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        response.text().await.unwrap()
    }

    /// The value of one sample, e.g. `ocppgw_connections{ocpp_version="ocpp1.6"}`
    /// (labels in registration order, as the encoder writes them).
    pub async fn sample(&self, series: &str) -> Option<f64> {
        let text = self.scrape().await;
        text.lines().find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    }

    /// Sends a command through the admin API in the background.
    pub fn command(&self, id: &str, body: Value) -> JoinHandle<(u16, Value)> {
        let http = self.http.clone();
        let url = format!("http://{}/api/v1/charge-points/{}/commands", self.admin, id);
        tokio::spawn(async move {
            let response = http.post(url).json(&body).send().await.unwrap();
            (response.status().as_u16(), response.json().await.unwrap())
        })
    }

    /// Waits until `condition` holds for the events of `id` in the ring.
    pub async fn wait_for_event(&self, id: &str, condition: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_event_within(id, STEP, condition).await
    }

    /// Like [`TestGateway::wait_for_event`], with its own bound.
    pub async fn wait_for_event_within(
        &self,
        id: &str,
        within: Duration,
        condition: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (_, body) = self
                .get(&format!("/api/v1/events?chargePointId={id}&limit=1000"))
                .await;
            if let Some(event) = body["events"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| condition(e))
            {
                return event.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "event not seen: {body}"
            );
            // The ring has no push notification; poll it at a short interval, bounded above.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Gateway logs in test output when `TEST_LOG` names a filter (e.g. `TEST_LOG=debug`).
pub fn init_test_logging() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// The upgrade request to `url` offering `protocol`, with an `Authorization` header when
/// given.
fn upgrade_request(url: &str, protocol: &str, authorization: Option<String>) -> http::Request<()> {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        protocol.parse().unwrap(),
    );
    if let Some(authorization) = authorization {
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, authorization.parse().unwrap());
    }
    request
}

/// The `Authorization` value of HTTP Basic credentials.
pub fn basic_authorization(username: &str, password: &[u8]) -> String {
    charge_point_gateway::auth::basic::BasicCredentials {
        username: username.to_owned(),
        password: password.to_vec(),
    }
    .to_header_value()
}

/// Connects to `url` offering `protocols`: the client and the negotiated subprotocol,
/// or the status of a refused handshake.
pub async fn connect_url(
    url: &str,
    protocols: &[&str],
) -> Result<(Cp, Option<String>), http::StatusCode> {
    let mut request = url.into_client_request().unwrap();
    if !protocols.is_empty() {
        request.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            protocols.join(", ").parse().unwrap(),
        );
    }
    let stream = tcp_to(&request).await;
    match handshake(request, stream).await {
        Ok((cp, response)) => {
            let protocol = response
                .headers()
                .get(http::header::SEC_WEBSOCKET_PROTOCOL)
                .map(|v| v.to_str().unwrap().to_owned());
            Ok((cp, protocol))
        }
        Err((status, _)) => Err(status),
    }
}

/// A TCP connection to the host and port of `request`'s URI.
async fn tcp_to(request: &http::Request<()>) -> Box<dyn Io> {
    let uri = request.uri();
    let address = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    Box::new(TcpStream::connect(address).await.unwrap())
}

/// The WebSocket handshake of `request` over `stream`, bounded by [`STEP`]: the client
/// and the server's answer, or the refusal's status and headers.
pub async fn handshake(
    request: http::Request<()>,
    stream: Box<dyn Io>,
) -> Result<(Cp, http::Response<Option<Vec<u8>>>), (http::StatusCode, http::HeaderMap)> {
    match tokio::time::timeout(STEP, tokio_tungstenite::client_async(request, stream)).await {
        Err(_) => panic!("handshake timed out"),
        Ok(Ok((ws, response))) => Ok((Cp { ws }, response)),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            Err((response.status(), response.headers().clone()))
        }
        Ok(Err(e)) => panic!("unexpected handshake error: {e}"),
    }
}

/// Why a TLS connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The TLS handshake failed: OpenSSL's reason.
    Tls(String),
    /// The upgrade was refused with this status.
    Http(http::StatusCode),
}

/// What a charge point's WebSocket runs over: plain TCP or TLS.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A charge point: a plain WebSocket client speaking raw OCPP-J frames.
pub struct Cp {
    /// The WebSocket.
    pub ws: WebSocketStream<Box<dyn Io>>,
}

/// What the client read next.
#[derive(Debug)]
pub enum Received {
    /// A text frame, parsed.
    Frame(Value),
    /// The connection closed (with the close frame, if any).
    Closed(Option<CloseFrame>),
}

impl Cp {
    /// Sends a text frame as it is.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send");
    }

    /// Sends `frame` as a text frame.
    pub async fn send_json(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    /// The next text frame or close, skipping pings and pongs.
    pub async fn receive(&mut self) -> Received {
        loop {
            let message = tokio::time::timeout(STEP, self.ws.next())
                .await
                .expect("a frame arrives in time");
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Received::Frame(
                        serde_json::from_str(text.as_str()).expect("gateway sends JSON"),
                    )
                }
                Some(Ok(Message::Close(frame))) => return Received::Closed(frame),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Received::Closed(None),
            }
        }
    }

    /// The next text frame; panics on a close or after [`STEP`].
    pub async fn frame(&mut self) -> Value {
        match self.receive().await {
            Received::Frame(frame) => frame,
            Received::Closed(frame) => panic!("connection closed: {frame:?}"),
        }
    }

    /// Waits for the gateway's close frame and returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.receive().await {
                Received::Frame(_) => continue,
                Received::Closed(Some(frame)) => {
                    return (u16::from(frame.code), frame.reason.to_string())
                }
                Received::Closed(None) => panic!("connection dropped without a close frame"),
            }
        }
    }

    /// Sends a CALL and returns the gateway's reply frame.
    pub async fn call(&mut self, id: &str, action: &str, payload: Value) -> Value {
        self.send_json(json!([2, id, action, payload])).await;
        self.frame().await
    }
}

/// A valid BootNotification request for subprotocol `version`.
pub fn boot_payload(version: &str) -> Value {
    match version {
        "ocpp1.6" => json!({"chargePointVendor": "Acme", "chargePointModel": "One"}),
        _ => {
            json!({"reason": "PowerUp", "chargingStation": {"vendorName": "Acme", "model": "One"}})
        }
    }
}

/// A sink for fault injection: holds deliveries until opened, or fails them.
pub struct GateSink {
    open: watch::Sender<bool>,
    fail: std::sync::atomic::AtomicBool,
    /// Events submitted so far.
    pub submitted: std::sync::atomic::AtomicUsize,
}

impl GateSink {
    /// A sink that starts open (acknowledging) or closed (holding acknowledgements).
    pub fn new(open: bool) -> Arc<GateSink> {
        Arc::new(GateSink {
            open: watch::Sender::new(open),
            fail: Default::default(),
            submitted: Default::default(),
        })
    }

    /// Opens (acknowledging everything held) or closes the gate.
    pub fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }

    /// Makes every submission fail, or succeed again.
    pub fn set_failing(&self, fail: bool) {
        self.fail.store(fail, std::sync::atomic::Ordering::SeqCst);
    }
}

impl EventSink for GateSink {
    fn submit(&self, _event: Arc<Event>) -> BoxFuture<'_, Result<Delivery, SinkError>> {
        self.submitted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let failing = self.fail.load(std::sync::atomic::Ordering::SeqCst);
        let mut open = self.open.subscribe();
        async move {
            let (ack, delivery) = oneshot::channel();
            tokio::spawn(async move {
                if failing {
                    let _ = ack.send(Err(SinkError::Unavailable("injected failure".into())));
                    return;
                }
                let _ = open.wait_for(|open| *open).await;
                let _ = ack.send(Ok(()));
            });
            Ok(Delivery::new(delivery))
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }

    fn health(&self) -> ComponentHealth {
        ComponentHealth {
            status: "up",
            detail: None,
        }
    }
}
