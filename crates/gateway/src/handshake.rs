//! The WebSocket upgrade: which path, which charge point, which OCPP version.
//!
//! Everything that decides whether a charge point may connect happens here, before the
//! upgrade completes, so a refusal is a plain HTTP error the charge point can log. This is
//! also where authentication (Basic auth, client certificates) slots in.

use ocpp::OcppVersion;
use percent_encoding::percent_decode_str;
use tokio_tungstenite::tungstenite::http::{self, HeaderValue, StatusCode};

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
}

/// Why a handshake is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
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
}

impl Refusal {
    /// The HTTP status the refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadPath { .. } => StatusCode::NOT_FOUND,
            Refusal::BadChargePointId(_) | Refusal::UnsupportedSubprotocol { .. } => {
                StatusCode::BAD_REQUEST
            }
            Refusal::AtCapacity | Refusal::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A label from a closed set, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::BadPath { .. } => "bad_path",
            Refusal::BadChargePointId(_) => "bad_charge_point_id",
            Refusal::UnsupportedSubprotocol { .. } => "unsupported_subprotocol",
            Refusal::AtCapacity => "at_capacity",
            Refusal::ShuttingDown => "shutting_down",
        }
    }

    /// The HTTP response that refuses the upgrade.
    pub fn to_response(&self) -> http::Response<Option<String>> {
        let mut response = http::Response::new(Some(format!("{self}\n")));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if matches!(self, Refusal::AtCapacity | Refusal::ShuttingDown) {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("30"));
        }
        response
    }
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
        let length = id.chars().count();
        if length > self.max_id_length {
            return Err(Refusal::BadChargePointId(format!(
                "{length} characters, at most {} allowed",
                self.max_id_length
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
        Ok(id.into_owned())
    }
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
