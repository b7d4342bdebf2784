//! Opening a charge point's WebSocket: source address, TLS, Basic auth, subprotocol.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use base64::Engine;
use ocpp::OcppVersion;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::{client::TlsStream, TlsConnector};
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest,
        error::ProtocolError,
        http::{HeaderValue, Uri},
        protocol::WebSocketConfig,
        Error as WsError,
    },
    WebSocketStream,
};
use tokio_util::either::Either;

/// Characters escaped in the charge point id's path segment: controls, space, and those
/// with a meaning in a URL.
const PATH_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// The byte stream under a charge point's WebSocket: plain TCP or TLS.
pub type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// An open charge point WebSocket.
pub type Socket = WebSocketStream<Stream>;

/// Why a connection could not be opened. [`ConnectError::kind`] labels it for counting.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address could not be resolved.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// TCP connect (or bind to the source address) failed.
    #[error("TCP connect failed: {0}")]
    Tcp(std::io::Error),
    /// Nothing answered within the connect timeout.
    #[error("connect timed out")]
    Timeout,
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The server refused the upgrade with an HTTP status.
    #[error("upgrade refused with HTTP {0}")]
    Refused(u16),
    /// The server did not agree to the offered subprotocol (chose another, or none).
    #[error("the server did not agree to subprotocol {offered}: {detail}")]
    Subprotocol {
        /// What was offered.
        offered: &'static str,
        /// What came back instead.
        detail: String,
    },
    /// Any other WebSocket handshake failure.
    #[error("WebSocket handshake failed: {0}")]
    Handshake(WsError),
}

impl ConnectError {
    /// A short label from a closed set, for error counts.
    pub fn kind(&self) -> String {
        match self {
            ConnectError::Resolve(_) => "connect_resolve".into(),
            ConnectError::Tcp(error) => match error.kind() {
                std::io::ErrorKind::ConnectionRefused => "connect_refused".into(),
                std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable => {
                    "connect_no_local_port".into()
                }
                _ if error.raw_os_error() == Some(24) => "connect_too_many_open_files".into(),
                _ => "connect_io".into(),
            },
            ConnectError::Timeout => "connect_timeout".into(),
            ConnectError::Tls(_) => "connect_tls".into(),
            ConnectError::Refused(status) => format!("connect_http_{status}"),
            ConnectError::Subprotocol { .. } => "connect_subprotocol".into(),
            ConnectError::Handshake(_) => "connect_handshake".into(),
        }
    }
}

/// Where and how charge points connect; built once per run.
#[derive(Clone)]
pub struct Connector {
    /// The base URL, e.g. `ws://127.0.0.1:8080/ocpp`; the id is appended.
    base: String,
    host: String,
    port: u16,
    tls: Option<Arc<ClientTls>>,
    /// Basic auth password; `{id}` in it becomes the charge point id.
    password: Option<String>,
    /// Local addresses to connect from, used in turn.
    sources: Arc<[IpAddr]>,
    timeout: Duration,
    websocket: WebSocketConfig,
}

/// TLS settings for `wss://` URLs.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Extra trusted CA certificates (PEM), beside the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate chain (PEM), for security profile 3.
    pub client_cert: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    pub client_key: Option<std::path::PathBuf>,
    /// Do not resume TLS sessions: every connection does a full handshake.
    pub no_resumption: bool,
}

/// TLS for the connector: with resumption, each charge point keeps its own session cache,
/// as a real station does (one shared cache would hand a few tickets to thousands of
/// charge points reconnecting at once, and most would do a full handshake).
struct ClientTls {
    base: Arc<rustls::ClientConfig>,
    resume: bool,
    per_charge_point: std::sync::Mutex<std::collections::HashMap<String, TlsConnector>>,
}

impl ClientTls {
    fn connector_for(&self, id: &str) -> TlsConnector {
        if !self.resume {
            return TlsConnector::from(self.base.clone());
        }
        let mut connectors = self
            .per_charge_point
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        connectors
            .entry(id.to_owned())
            .or_insert_with(|| {
                let mut config = (*self.base).clone();
                config.resumption = rustls::client::Resumption::in_memory_sessions(4);
                TlsConnector::from(Arc::new(config))
            })
            .clone()
    }
}

impl Connector {
    /// Checks the URL and loads TLS material; errors name the option at fault.
    pub fn new(
        url: &str,
        tls: &TlsOptions,
        password: Option<String>,
        sources: Vec<IpAddr>,
        timeout: Duration,
    ) -> anyhow::Result<Connector> {
        let uri: Uri = url
            .parse()
            .map_err(|error| anyhow::anyhow!("--url {url:?} is not a URL: {error}"))?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => anyhow::bail!("--url {url:?} must start with ws:// or wss://"),
        };
        let host = uri
            .host()
            .ok_or_else(|| anyhow::anyhow!("--url {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure {
            let mut config = client_tls_config(tls)?;
            if tls.no_resumption {
                config.resumption = rustls::client::Resumption::disabled();
            }
            Some(Arc::new(ClientTls {
                base: Arc::new(config),
                resume: !tls.no_resumption,
                per_charge_point: Default::default(),
            }))
        } else if tls.ca_file.is_some() || tls.client_cert.is_some() {
            anyhow::bail!("--ca-file, --client-cert and --client-key apply to wss:// URLs only");
        } else {
            None
        };
        Ok(Connector {
            base: url.trim_end_matches('/').to_owned(),
            host,
            port,
            tls,
            password,
            sources: sources.into(),
            timeout,
            websocket: WebSocketConfig::default()
                .read_buffer_size(4 * 1024)
                .write_buffer_size(0),
        })
    }

    /// The base URL, without the charge point id.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URL charge point `id` connects to (the id percent-encoded as a path segment).
    pub fn url_of(&self, id: &str) -> String {
        format!("{}/{}", self.base, utf8_percent_encode(id, PATH_SEGMENT))
    }

    /// Opens charge point `id`'s WebSocket, from source address number `index` (mod count).
    pub async fn connect(
        &self,
        id: &str,
        version: OcppVersion,
        index: usize,
    ) -> Result<Socket, ConnectError> {
        let source = (!self.sources.is_empty()).then(|| self.sources[index % self.sources.len()]);
        tokio::time::timeout(self.timeout, self.connect_from(id, version, source))
            .await
            .unwrap_or(Err(ConnectError::Timeout))
    }

    async fn connect_from(
        &self,
        id: &str,
        version: OcppVersion,
        source: Option<IpAddr>,
    ) -> Result<Socket, ConnectError> {
        let target = self.resolve(source).await?;
        let socket = if target.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(ConnectError::Tcp)?;
        if let Some(source) = source {
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(ConnectError::Tcp)?;
        }
        let tcp = socket.connect(target).await.map_err(ConnectError::Tcp)?;
        let _ = tcp.set_nodelay(true);
        let stream = match &self.tls {
            None => Either::Left(tcp),
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|error| ConnectError::Tls(std::io::Error::other(error)))?;
                Either::Right(
                    tls.connector_for(id)
                        .connect(name, tcp)
                        .await
                        .map_err(ConnectError::Tls)?,
                )
            }
        };
        let mut request = self
            .url_of(id)
            .into_client_request()
            .map_err(ConnectError::Handshake)?;
        let offered = version.subprotocol();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(offered));
        if let Some(password) = &self.password {
            let credentials = base64::engine::general_purpose::STANDARD
                .encode(format!("{id}:{}", password.replace("{id}", id)));
            let value = HeaderValue::from_str(&format!("Basic {credentials}"))
                .map_err(|error| ConnectError::Handshake(WsError::HttpFormat(error.into())))?;
            request.headers_mut().insert("authorization", value);
        }
        let (socket, response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(self.websocket))
                .await
                .map_err(|error| match error {
                    WsError::Http(response) => ConnectError::Refused(response.status().as_u16()),
                    WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(error)) => {
                        ConnectError::Subprotocol {
                            offered,
                            detail: error.to_string(),
                        }
                    }
                    other => ConnectError::Handshake(other),
                })?;
        let selected = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|value| value.to_str().ok());
        if selected != Some(offered) {
            return Err(ConnectError::Subprotocol {
                offered,
                detail: format!("it selected {selected:?}"),
            });
        }
        Ok(socket)
    }

    async fn resolve(&self, source: Option<IpAddr>) -> Result<SocketAddr, ConnectError> {
        let wanted_v4 = source.map(|source| source.is_ipv4());
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|_| ConnectError::Resolve(self.host.clone()))?
            .find(|address| wanted_v4.is_none_or(|v4| address.is_ipv4() == v4))
            .ok_or_else(|| ConnectError::Resolve(self.host.clone()))
    }
}

fn client_tls_config(options: &TlsOptions) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    // A missing or unreadable system store is not fatal when a CA file is given.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = &options.ca_file {
        for certificate in read_certificates(path, "--ca-file")? {
            roots.add(certificate).map_err(|error| {
                anyhow::anyhow!(
                    "--ca-file {}: unusable certificate: {error}",
                    path.display()
                )
            })?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| anyhow::anyhow!("TLS setup failed: {error}"))?
        .with_root_certificates(roots);
    match (&options.client_cert, &options.client_key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = read_certificates(cert, "--client-cert")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|error| {
                anyhow::anyhow!(
                    "--client-key {}: no usable private key: {error}",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| anyhow::anyhow!("--client-cert/--client-key: {error}"))
        }
        _ => anyhow::bail!("--client-cert and --client-key go together"),
    }
}

fn read_certificates(path: &Path, option: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| anyhow::anyhow!("{option} {}: {error}", path.display()))?;
    if certificates.is_empty() {
        anyhow::bail!(
            "{option} {}: no PEM certificate in the file",
            path.display()
        );
    }
    Ok(certificates)
}

/// Parses `127.0.0.2`, `127.0.0.2-127.0.0.20` and comma-separated lists of both.
pub fn parse_sources(text: &str) -> Result<Vec<IpAddr>, String> {
    let mut sources = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            None => sources.push(
                part.parse::<IpAddr>()
                    .map_err(|_| format!("{part:?} is not an IP address"))?,
            ),
            Some((first, last)) => {
                let parse = |text: &str| {
                    text.trim()
                        .parse::<std::net::Ipv4Addr>()
                        .map_err(|_| format!("{text:?} in range {part:?} is not an IPv4 address"))
                };
                let (first, last) = (u32::from(parse(first)?), u32::from(parse(last)?));
                if last < first || last - first >= 65_536 {
                    return Err(format!(
                        "range {part:?} must go upwards and hold at most 65536 addresses"
                    ));
                }
                sources.extend((first..=last).map(|a| IpAddr::from(std::net::Ipv4Addr::from(a))));
            }
        }
    }
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_ranges_and_lists() {
        let sources = parse_sources("127.0.0.2-127.0.0.4, 127.0.1.1").unwrap();
        assert_eq!(sources.len(), 4);
        assert_eq!(sources[2].to_string(), "127.0.0.4");
        assert!(parse_sources("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_sources("localhost").is_err());
    }

    #[test]
    fn rejects_urls_that_are_not_websockets() {
        let error = Connector::new(
            "http://127.0.0.1/ocpp",
            &TlsOptions::default(),
            None,
            vec![],
            Duration::from_secs(1),
        )
        .err()
        .expect("http:// is refused");
        assert!(error.to_string().contains("ws://"), "{error}");
    }
}
