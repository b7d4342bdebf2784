//! The WebSocket upgrade: which path, which charge point, which OCPP version.
//!
//! Everything that decides whether a charge point may connect happens here, before the
//! upgrade completes, so a refusal is a plain HTTP error the charge point can log. This is
//! also where authentication (Basic auth, client certificates) slots in.
//!
//! The gateway parses the request head itself ([`parse_request_head`]) rather than leaving
//! it to the WebSocket library, so that every request gets an answer: a plain HTTP request
//! or an unsupported WebSocket version gets `426`, not a silent close, and the raw request
//! target is seen before a URL parser could drop a `#` and everything after it.

use ocpp::OcppVersion;
use percent_encoding::percent_decode_str;

use crate::labels::ConnectionAttempt;
use tokio_tungstenite::tungstenite::{
    handshake::derive_accept_key,
    http::{self, HeaderValue, StatusCode},
};

/// Longest request head (request line and headers) accepted, in bytes.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Most header fields accepted in a request head.
const MAX_HEADERS: usize = 64;
/// The only WebSocket protocol version there is (RFC 6455).
const WEBSOCKET_VERSION: &str = "13";

/// Characters allowed in a charge point id besides ASCII letters and digits.
///
/// OCPP 2.x restricts the identity to a URL-safe set; `:` `*` `=` `+` `|` `@` `#` are seen
/// in deployed 1.6 fleets and are accepted too. `/`, whitespace and control characters
/// never are.
pub const ID_EXTRA_CHARACTERS: &str = "-_.:*=+|@#";

/// What the handshake checks, from configuration.
#[derive(Debug, Clone)]
pub struct HandshakePolicy {
    /// The path prefix, e.g. `/ocpp`.
    pub path_prefix: String,
    /// Supported versions, most preferred first.
    pub supported: Vec<OcppVersion>,
    /// Version for clients that offer no subprotocol.
    pub fallback: Option<OcppVersion>,
    /// Longest id, in characters.
    pub max_id_length: usize,
}

/// A handshake that may proceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The percent-decoded charge point id.
    pub charge_point_id: String,
    /// The negotiated version.
    pub version: OcppVersion,
    /// Whether the version is the fallback (no subprotocol offered).
    pub fallback: bool,
    /// The serial number its BootNotification must carry (set by authentication when a
    /// client certificate is bound to a serial number).
    pub bound_serial_number: Option<String>,
}

/// Why a handshake is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request head is not valid HTTP/1.x, or lacks the `Sec-WebSocket-Key`.
    #[error("malformed request: {0}")]
    MalformedRequest(String),
    /// The request head is longer than [`MAX_REQUEST_HEAD`] or has too many fields.
    #[error("request head too large (at most {MAX_REQUEST_HEAD} bytes and {MAX_HEADERS} fields)")]
    RequestHeadTooLarge,
    /// A method other than `GET`.
    #[error("method not allowed; a WebSocket upgrade is a GET request")]
    MethodNotAllowed,
    /// HTTP/1.0, which cannot carry a WebSocket upgrade.
    #[error("a WebSocket upgrade needs HTTP/1.1")]
    HttpVersionTooOld,
    /// An HTTP request without a WebSocket upgrade (a browser, a misdirected scraper).
    #[error("this port only accepts OCPP WebSocket connections; upgrade to websocket")]
    NotWebSocket,
    /// A WebSocket version other than 13.
    #[error("unsupported WebSocket version; only version 13 is supported")]
    UnsupportedWebSocketVersion,
    /// The path is not `{prefix}/{id}`.
    #[error("unknown path; connect to {prefix}/{{chargePointId}}")]
    BadPath {
        /// The configured prefix.
        prefix: String,
    },
    /// The id is empty, too long, not UTF-8 or has a forbidden character.
    #[error("invalid charge point id: {0}")]
    BadChargePointId(String),
    /// None of the offered subprotocols is supported (or none offered and no fallback).
    #[error("no supported OCPP subprotocol offered (supported: {supported})")]
    UnsupportedSubprotocol {
        /// The supported set, comma-separated.
        supported: String,
    },
    /// The instance holds its maximum number of connections.
    #[error("gateway at connection capacity")]
    AtCapacity,
    /// The gateway is shutting down.
    #[error("gateway shutting down")]
    ShuttingDown,
    /// Authentication failed. One answer for every reason (unknown id, wrong password,
    /// missing credentials, a profile this listener cannot give), so that a client learns
    /// nothing about which ids exist; `ocppgw_auth_results_total` tells them apart.
    #[error("authentication failed")]
    Unauthorized,
    /// Refused unchecked while this id or address backs off after failed attempts.
    #[error("too many failed authentication attempts; retry after {retry_after_seconds} s")]
    AuthBackoff {
        /// Whole seconds until an attempt is checked again (at least 1).
        retry_after_seconds: u64,
    },
}

impl Refusal {
    /// The HTTP status the refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::MalformedRequest(_) | Refusal::HttpVersionTooOld => StatusCode::BAD_REQUEST,
            Refusal::RequestHeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::NotWebSocket | Refusal::UnsupportedWebSocketVersion => {
                StatusCode::UPGRADE_REQUIRED
            }
            Refusal::BadPath { .. } => StatusCode::NOT_FOUND,
            Refusal::BadChargePointId(_) | Refusal::UnsupportedSubprotocol { .. } => {
                StatusCode::BAD_REQUEST
            }
            Refusal::AtCapacity | Refusal::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::AuthBackoff { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The attempt's result in `ocppgw_connection_attempts_total{result}`.
    pub fn attempt(&self) -> ConnectionAttempt {
        match self {
            Refusal::MalformedRequest(_)
            | Refusal::RequestHeadTooLarge
            | Refusal::MethodNotAllowed
            | Refusal::HttpVersionTooOld => ConnectionAttempt::BadRequest,
            Refusal::NotWebSocket => ConnectionAttempt::NotWebsocket,
            Refusal::UnsupportedWebSocketVersion => ConnectionAttempt::UnsupportedWebsocketVersion,
            Refusal::BadPath { .. } => ConnectionAttempt::BadPath,
            Refusal::BadChargePointId(_) => ConnectionAttempt::BadChargePointId,
            Refusal::UnsupportedSubprotocol { .. } => ConnectionAttempt::UnsupportedSubprotocol,
            Refusal::AtCapacity => ConnectionAttempt::AtCapacity,
            Refusal::ShuttingDown => ConnectionAttempt::ShuttingDown,
            Refusal::Unauthorized => ConnectionAttempt::Unauthorized,
            Refusal::AuthBackoff { .. } => ConnectionAttempt::AuthBackoff,
        }
    }

    /// A label from a closed set, for logs and metrics.
    pub fn label(&self) -> &'static str {
        self.attempt().as_str()
    }

    /// The HTTP response that refuses the upgrade.
    pub fn to_response(&self) -> http::Response<Option<String>> {
        let mut response = http::Response::new(Some(format!("{self}\n")));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let headers = response.headers_mut();
        match self {
            Refusal::AtCapacity | Refusal::ShuttingDown => {
                headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("30"));
            }
            Refusal::MethodNotAllowed => {
                headers.insert(http::header::ALLOW, HeaderValue::from_static("GET"));
            }
            // RFC 7235 4.1 and RFC 7617 2.1: the scheme and realm to authenticate with.
            Refusal::Unauthorized => {
                headers.insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"OCPP\", charset=\"UTF-8\""),
                );
            }
            Refusal::AuthBackoff {
                retry_after_seconds,
            } => {
                headers.insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(*retry_after_seconds),
                );
            }
            // RFC 7231 6.5.15: a 426 names the protocol to upgrade to.
            Refusal::NotWebSocket => {
                headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(
                    http::header::CONNECTION,
                    HeaderValue::from_static("Upgrade"),
                );
            }
            // RFC 6455 4.2.2: the versions the server understands.
            Refusal::UnsupportedWebSocketVersion => {
                headers.insert(
                    http::header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static(WEBSOCKET_VERSION),
                );
            }
            _ => {}
        }
        response
    }

    /// The refusal as the bytes of an HTTP/1.1 response that closes the connection.
    pub fn to_http_bytes(&self) -> Vec<u8> {
        let response = self.to_response();
        let body = response.body().as_deref().unwrap_or_default();
        let mut bytes = format!(
            "HTTP/1.1 {} {}\r\n",
            response.status().as_str(),
            response.status().canonical_reason().unwrap_or("Error")
        )
        .into_bytes();
        for (name, value) in response.headers() {
            bytes.extend_from_slice(name.as_str().as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(
            format!(
                "content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        bytes
    }
}

/// Parses the request head in `buffer` (the bytes read so far): `Ok(None)` while it is
/// incomplete, else the request and the length of its head (bytes after it belong to the
/// WebSocket).
pub fn parse_request_head(buffer: &[u8]) -> Result<Option<(http::Request<()>, usize)>, Refusal> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    let length = match parsed.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buffer.len() >= MAX_REQUEST_HEAD => {
            return Err(Refusal::RequestHeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::RequestHeadTooLarge),
        Err(e) => return Err(Refusal::MalformedRequest(e.to_string())),
    };
    if length > MAX_REQUEST_HEAD {
        return Err(Refusal::RequestHeadTooLarge);
    }
    let malformed = |what: &str| Refusal::MalformedRequest(what.to_owned());
    let target = parsed.path.ok_or_else(|| malformed("no request target"))?;
    // A client never sends a fragment; a raw `#` here is part of the id, and a URL parser
    // would cut it and everything after it, turning `CP#x` into another charge point `CP`.
    if target.contains('#') {
        return Err(Refusal::BadChargePointId(
            "a raw '#' in the URL; percent-encode it as %23".to_owned(),
        ));
    }
    let mut request = http::Request::builder()
        .method(parsed.method.ok_or_else(|| malformed("no method"))?)
        .uri(target)
        .version(match parsed.version {
            Some(0) => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        });
    for field in parsed.headers.iter() {
        request = request.header(field.name, field.value);
    }
    let request = request
        .body(())
        .map_err(|e| Refusal::MalformedRequest(e.to_string()))?;
    Ok(Some((request, length)))
}

/// Whether the header `name` lists `token` (comma-separated, case-insensitive).
fn has_token<B>(request: &http::Request<B>, name: http::header::HeaderName, token: &str) -> bool {
    request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// Checks that `request` is a WebSocket upgrade this server can complete (RFC 6455 4.2.1),
/// returning the `Sec-WebSocket-Accept` value for its key.
pub fn check_websocket_upgrade<B>(request: &http::Request<B>) -> Result<String, Refusal> {
    if request.method() != http::Method::GET {
        return Err(Refusal::MethodNotAllowed);
    }
    if request.version() < http::Version::HTTP_11 {
        return Err(Refusal::HttpVersionTooOld);
    }
    if !has_token(request, http::header::UPGRADE, "websocket")
        || !has_token(request, http::header::CONNECTION, "upgrade")
    {
        return Err(Refusal::NotWebSocket);
    }
    let version = request.headers().get(http::header::SEC_WEBSOCKET_VERSION);
    if version.is_none_or(|version| version.as_bytes() != WEBSOCKET_VERSION.as_bytes()) {
        return Err(Refusal::UnsupportedWebSocketVersion);
    }
    let key = request
        .headers()
        .get(http::header::SEC_WEBSOCKET_KEY)
        .map(|key| key.as_bytes())
        .filter(|key| !key.is_empty())
        .ok_or_else(|| Refusal::MalformedRequest("no Sec-WebSocket-Key".to_owned()))?;
    Ok(derive_accept_key(key))
}

/// The `101 Switching Protocols` answer that completes an accepted upgrade.
pub fn switching_protocols(accept_key: &str, accepted: &Accepted) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {accept_key}\r\n"
    );
    // A charge point that offered no subprotocol must not be sent one (RFC 6455 4.2.2).
    if !accepted.fallback {
        response.push_str("sec-websocket-protocol: ");
        response.push_str(accepted.version.subprotocol());
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    response.into_bytes()
}

impl HandshakePolicy {
    /// Decides on an upgrade request from its path and `Sec-WebSocket-Protocol` headers.
    pub fn negotiate<B>(&self, request: &http::Request<B>) -> Result<Accepted, Refusal> {
        let charge_point_id = self.charge_point_id(request.uri().path())?;
        let offered: Vec<&str> = request
            .headers()
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .collect();
        let (version, fallback) = if offered.is_empty() {
            (self.fallback.ok_or_else(|| self.unsupported())?, true)
        } else {
            let chosen = self.supported.iter().copied().find(|version| {
                offered
                    .iter()
                    .any(|token| token.eq_ignore_ascii_case(version.subprotocol()))
            });
            (chosen.ok_or_else(|| self.unsupported())?, false)
        };
        Ok(Accepted {
            charge_point_id,
            version,
            fallback,
            bound_serial_number: None,
        })
    }

    fn unsupported(&self) -> Refusal {
        let supported: Vec<&str> = self.supported.iter().map(|v| v.subprotocol()).collect();
        Refusal::UnsupportedSubprotocol {
            supported: supported.join(", "),
        }
    }

    /// The percent-decoded, checked charge point id in a request path.
    pub fn charge_point_id(&self, path: &str) -> Result<String, Refusal> {
        let bad_path = || Refusal::BadPath {
            prefix: self.path_prefix.clone(),
        };
        let prefix = self.path_prefix.trim_end_matches('/');
        let encoded = path
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(bad_path)?;
        if encoded.is_empty() || encoded.contains('/') {
            return Err(bad_path());
        }
        let id = percent_decode_str(encoded).decode_utf8().map_err(|_| {
            Refusal::BadChargePointId("not valid UTF-8 after percent-decoding".into())
        })?;
        check_charge_point_id(&id, self.max_id_length)?;
        Ok(id.into_owned())
    }
}

/// Checks a (decoded) charge point id against the rules every id must meet: not empty, at
/// most `max_length` characters, letters, digits and [`ID_EXTRA_CHARACTERS`] only.
pub fn check_charge_point_id(id: &str, max_length: usize) -> Result<(), Refusal> {
    let length = id.chars().count();
    if length == 0 {
        return Err(Refusal::BadChargePointId("empty".into()));
    }
    if length > max_length {
        return Err(Refusal::BadChargePointId(format!(
            "{length} characters, at most {max_length} allowed"
        )));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ID_EXTRA_CHARACTERS.contains(*c)))
    {
        return Err(Refusal::BadChargePointId(format!(
            "character {bad:?} is not allowed (letters, digits and {ID_EXTRA_CHARACTERS})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use OcppVersion::*;

    fn policy() -> HandshakePolicy {
        HandshakePolicy {
            path_prefix: "/ocpp".into(),
            supported: vec![V21, V201, V16],
            fallback: Some(V16),
            max_id_length: 20,
        }
    }

    fn request(path: &str, protocols: &[&str]) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(path);
        for p in protocols {
            builder = builder.header(http::header::SEC_WEBSOCKET_PROTOCOL, *p);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn picks_the_servers_preferred_version() {
        let a = policy()
            .negotiate(&request("/ocpp/CP-1", &["ocpp1.6, ocpp2.0.1"]))
            .unwrap();
        assert_eq!((a.version, a.fallback), (V201, false));
        let a = policy()
            .negotiate(&request("/ocpp/CP-1", &["ocpp1.6", "ocpp2.1"]))
            .unwrap();
        assert_eq!(a.version, V21);
    }

    #[test]
    fn no_offer_uses_the_fallback() {
        let a = policy().negotiate(&request("/ocpp/CP-1", &[])).unwrap();
        assert_eq!((a.version, a.fallback), (V16, true));
        let strict = HandshakePolicy {
            fallback: None,
            ..policy()
        };
        assert!(matches!(
            strict.negotiate(&request("/ocpp/CP-1", &[])),
            Err(Refusal::UnsupportedSubprotocol { .. })
        ));
    }

    #[test]
    fn unsupported_offers_are_refused() {
        let e = policy()
            .negotiate(&request("/ocpp/CP-1", &["ocpp1.5", "mqtt"]))
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let only16 = HandshakePolicy {
            supported: vec![V16],
            ..policy()
        };
        assert!(only16
            .negotiate(&request("/ocpp/CP-1", &["ocpp2.0.1"]))
            .is_err());
    }

    fn head(text: &str) -> http::Request<()> {
        parse_request_head(text.as_bytes())
            .expect("parses")
            .expect("complete")
            .0
    }

    const UPGRADE: &str = "Host: gw\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn a_complete_upgrade_is_accepted_with_the_rfc_accept_key() {
        let request = head(&format!("GET /ocpp/CP-1 HTTP/1.1\r\n{UPGRADE}\r\n"));
        // The example of RFC 6455 1.3.
        assert_eq!(
            check_websocket_upgrade(&request).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let accepted = policy().negotiate(&request).unwrap();
        let response = String::from_utf8(switching_protocols("k", &accepted)).unwrap();
        assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(!response.contains("sec-websocket-protocol"), "{response}");
    }

    #[test]
    fn bytes_after_the_head_are_left_for_the_websocket() {
        let mut bytes = format!("GET /ocpp/CP-1 HTTP/1.1\r\n{UPGRADE}\r\n").into_bytes();
        bytes.extend_from_slice(b"\x81\x05");
        let (_, length) = parse_request_head(&bytes).unwrap().unwrap();
        assert_eq!(&bytes[length..], b"\x81\x05");
        assert!(parse_request_head(b"GET /ocpp/CP-1 HTTP/1.1\r\nHost:")
            .unwrap()
            .is_none());
    }

    #[test]
    fn requests_that_are_no_websocket_upgrade_get_a_fitting_4xx() {
        for (text, status, label) in [
            // A scraper pointed at the OCPP port.
            ("GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n".to_owned(), 426, "not_websocket"),
            (
                format!("GET /ocpp/CP-1 HTTP/1.0\r\n{UPGRADE}\r\n"),
                400,
                "bad_request",
            ),
            (
                format!("POST /ocpp/CP-1 HTTP/1.1\r\n{UPGRADE}\r\n"),
                405,
                "bad_request",
            ),
            (
                format!("GET /ocpp/CP-1 HTTP/1.1\r\n{}\r\n", UPGRADE.replace(": 13", ": 8")),
                426,
                "unsupported_websocket_version",
            ),
            (
                "GET /ocpp/CP-1 HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n".to_owned(),
                400,
                "bad_request",
            ),
        ] {
            let refusal = check_websocket_upgrade(&head(&text)).unwrap_err();
            assert_eq!(refusal.status().as_u16(), status, "{text}");
            assert_eq!(refusal.label(), label, "{text}");
        }
    }

    #[test]
    fn refusals_carry_the_headers_their_status_requires() {
        let version = Refusal::UnsupportedWebSocketVersion.to_http_bytes();
        let version = String::from_utf8(version).unwrap();
        assert!(
            version.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{version}"
        );
        assert!(
            version.contains("sec-websocket-version: 13\r\n"),
            "{version}"
        );
        assert!(version.contains("connection: close\r\n"), "{version}");
        let plain = String::from_utf8(Refusal::NotWebSocket.to_http_bytes()).unwrap();
        assert!(plain.contains("upgrade: websocket\r\n"), "{plain}");
        let method = String::from_utf8(Refusal::MethodNotAllowed.to_http_bytes()).unwrap();
        assert!(method.contains("allow: GET\r\n"), "{method}");
        let unauthorized = String::from_utf8(Refusal::Unauthorized.to_http_bytes()).unwrap();
        assert!(
            unauthorized.starts_with("HTTP/1.1 401 Unauthorized\r\n")
                && unauthorized
                    .contains("www-authenticate: Basic realm=\"OCPP\", charset=\"UTF-8\"\r\n"),
            "{unauthorized}"
        );
        let backoff = Refusal::AuthBackoff {
            retry_after_seconds: 7,
        };
        let backoff = String::from_utf8(backoff.to_http_bytes()).unwrap();
        assert!(
            backoff.starts_with("HTTP/1.1 429 Too Many Requests\r\n")
                && backoff.contains("retry-after: 7\r\n"),
            "{backoff}"
        );
        let body = Refusal::AtCapacity.to_http_bytes();
        let text = String::from_utf8(body).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
    }

    #[test]
    fn a_raw_hash_in_the_path_is_refused_not_cut() {
        let refusal =
            parse_request_head(format!("GET /ocpp/CP#x HTTP/1.1\r\n{UPGRADE}\r\n").as_bytes())
                .unwrap_err();
        assert_eq!(refusal.status(), StatusCode::BAD_REQUEST);
        assert_eq!(refusal.label(), "bad_charge_point_id");
        // Percent-encoded, `#` is a valid id character.
        let request = head(&format!("GET /ocpp/CP%23x HTTP/1.1\r\n{UPGRADE}\r\n"));
        assert_eq!(
            policy().negotiate(&request).unwrap().charge_point_id,
            "CP#x"
        );
    }

    #[test]
    fn oversized_or_malformed_heads_are_refused() {
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_REQUEST_HEAD));
        assert_eq!(
            parse_request_head(long.as_bytes()).unwrap_err(),
            Refusal::RequestHeadTooLarge
        );
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            parse_request_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).unwrap_err(),
            Refusal::RequestHeadTooLarge
        );
        assert_eq!(
            parse_request_head(b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n")
                .unwrap_err()
                .label(),
            "bad_request"
        );
    }

    #[test]
    fn ids_are_percent_decoded_and_checked() {
        let a = policy()
            .negotiate(&request("/ocpp/CP%3A01%2A", &[]))
            .unwrap();
        assert_eq!(a.charge_point_id, "CP:01*");
        for (path, status) in [
            ("/ocpp/", StatusCode::NOT_FOUND),
            ("/ocpp", StatusCode::NOT_FOUND),
            ("/other/CP-1", StatusCode::NOT_FOUND),
            ("/ocpp/a/b", StatusCode::NOT_FOUND),
            ("/ocpp/a%2Fb", StatusCode::BAD_REQUEST),
            ("/ocpp/a%20b", StatusCode::BAD_REQUEST),
            ("/ocpp/%FF", StatusCode::BAD_REQUEST),
            ("/ocpp/ABCDEFGHIJKLMNOPQRSTU", StatusCode::BAD_REQUEST),
        ] {
            let e = policy().negotiate(&request(path, &[])).unwrap_err();
            assert_eq!(e.status(), status, "{path}");
        }
    }
}
