//! Serving the admin API and the metrics endpoint over HTTP/1.1, with the limits a
//! listener that shares the process's open files with tens of thousands of charge points
//! needs: a cap on connections, a deadline for each request head (which also ends idle
//! keep-alive connections), a deadline and a size limit for each request body.
//!
//! The last few places under the cap are kept for health probes: a connection that gets
//! one is served one request, and only `/livez`, `/readyz` or `/health`, so that clients
//! holding every ordinary place cannot make a liveness probe fail.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Router,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{either::Either, sync::CancellationToken};
use tracing::debug;

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};

use crate::{
    labels::HttpListener,
    listener::stream::TcpOrTls,
    metrics::{ListenerLabels, MetricsRegistry},
    tls::TlsServer,
};

/// The HTTP listeners' metrics.
#[derive(Clone, Default)]
pub struct HttpMetrics {
    /// `ocppgw_http_connections{listener}`.
    pub connections: Family<ListenerLabels, Gauge>,
    /// `ocppgw_http_connections_refused_total{listener}`.
    pub refused: Family<ListenerLabels, Counter>,
}

impl HttpMetrics {
    /// Registers the HTTP listeners' metrics in `r`, every listener's series at 0.
    pub fn register(r: &mut MetricsRegistry) -> HttpMetrics {
        let m = HttpMetrics::default();
        r.add(
            "ocppgw_http_connections",
            "Open connections to the admin and metrics listeners",
            m.connections.clone(),
        );
        r.add(
            "ocppgw_http_connections_refused",
            "Connections to the admin and metrics listeners closed at once at the connection limit",
            m.refused.clone(),
        );
        for listener in HttpListener::ALL {
            let labels = ListenerLabels {
                listener: listener.as_str(),
            };
            let _ = m.connections.get_or_create(&labels);
            let _ = m.refused.get_or_create(&labels);
        }
        m
    }
}

/// The paths a probe place serves.
const PROBE_PATHS: [&str; 3] = ["/livez", "/readyz", "/health"];
/// How long a connection on a probe place may take to send its request.
const PROBE_HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connections still open at shutdown get to finish their request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The limits of one HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Open connections at most (probe places included); further ones are closed at once.
    pub max_connections: usize,
    /// Places of `max_connections` kept for health probes.
    pub probe_places: usize,
    /// Time to send a request head, and to stay idle between requests; also the time to
    /// send a request body.
    pub idle_timeout: Duration,
    /// Largest request body, in bytes; a larger `Content-Length` is refused at once (413).
    pub max_body_bytes: usize,
}

/// Serves `router` on `listener` within `limits` until `stop`; over TLS (HTTPS) with
/// `tls`, whose handshake must complete within the idle timeout.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<TlsServer>>,
    router: Router,
    limits: HttpLimits,
    name: HttpListener,
    metrics: HttpMetrics,
    stop: CancellationToken,
) {
    let labels = ListenerLabels {
        listener: name.as_str(),
    };
    let open = metrics.connections.get_or_create(&labels).clone();
    let refused = metrics.refused.get_or_create(&labels).clone();
    let probe_places = limits.probe_places.min(limits.max_connections);
    let ordinary = Arc::new(Semaphore::new(limits.max_connections - probe_places));
    let probes = Arc::new(Semaphore::new(probe_places));
    let router = router.layer(axum::middleware::from_fn_with_state(
        limits.clone(),
        bounded_body,
    ));
    let probe_router = router.clone().layer(axum::middleware::from_fn(probes_only));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    crate::error_limited!(listener = name.as_str(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (permit, router, head_timeout, keep_alive) = match ordinary.clone().try_acquire_owned()
        {
            Ok(permit) => (permit, router.clone(), limits.idle_timeout, true),
            Err(_) => match probes.clone().try_acquire_owned() {
                Ok(permit) => (
                    permit,
                    probe_router.clone(),
                    limits.idle_timeout.min(PROBE_HEAD_TIMEOUT),
                    false,
                ),
                Err(_) => {
                    refused.inc();
                    crate::warn_limited!(listener = name.as_str(), %peer, limit = limits.max_connections, "HTTP connection refused: at the connection limit");
                    continue;
                }
            },
        };
        let (open, stop, tls) = (open.clone(), stop.clone(), tls.clone());
        open.inc();
        connections.spawn(async move {
            let stream: TcpOrTls = match tls {
                None => Either::Left(stream),
                Some(tls) => match tokio::time::timeout(head_timeout, tls.accept(stream)).await {
                    Ok(Ok((stream, _))) => Either::Right(Box::new(stream)),
                    Ok(Err(e)) => {
                        debug!(%peer, error = ?e, "TLS handshake failed");
                        open.dec();
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "TLS handshake timed out");
                        open.dec();
                        return;
                    }
                },
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(head_timeout)
                .keep_alive(keep_alive);
            let connection =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut())
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(e) = served {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            open.dec();
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}

/// Refuses a declared body over the limit at once, and reads the body within the idle
/// timeout, so that neither a huge `Content-Length` nor a trickling body holds a
/// connection.
async fn bounded_body(
    axum::extract::State(limits): axum::extract::State<HttpLimits>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_body_bytes as u64) {
        return closing(StatusCode::PAYLOAD_TOO_LARGE, &too_large(&limits));
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(
        limits.idle_timeout,
        axum::body::to_bytes(body, limits.max_body_bytes),
    )
    .await;
    let bytes = match read {
        Err(_) => {
            return closing(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            )
        }
        Ok(Err(e)) if is_length_limit(&e) => {
            return closing(StatusCode::PAYLOAD_TOO_LARGE, &too_large(&limits))
        }
        Ok(Err(e)) => {
            return closing(
                StatusCode::BAD_REQUEST,
                &format!("the request body could not be read: {e}"),
            )
        }
        Ok(Ok(bytes)) => bytes,
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn too_large(limits: &HttpLimits) -> String {
    format!("request body larger than {} bytes", limits.max_body_bytes)
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(error) = cause {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// On a probe place: only the health endpoints.
async fn probes_only(request: Request, next: Next) -> Response {
    if PROBE_PATHS.contains(&request.uri().path()) {
        next.run(request).await
    } else {
        closing(
            StatusCode::SERVICE_UNAVAILABLE,
            "at the connection limit; only health probes are served",
        )
    }
}

/// An error answer after which the connection closes (its body may be unread).
fn closing(status: StatusCode, message: &str) -> Response {
    let mut response =
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Whether `headers` carry `Authorization: Bearer <token>`. The scheme is matched
/// case-insensitively (RFC 7235 2.1), the token in constant time.
pub fn bearer_matches(headers: &axum::http::HeaderMap, token: &str) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_credentials)
        .is_some_and(|presented| {
            subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), token.as_bytes()).into()
        })
}

/// The credentials of an `Authorization: Bearer <token>` value.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim_start())
}

#[cfg(test)]
mod tests {
    use super::bearer_credentials;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "  Bearer   abc"] {
            assert_eq!(bearer_credentials(value), Some("abc"), "{value}");
        }
        assert_eq!(bearer_credentials("Basic abc"), None);
        assert_eq!(bearer_credentials("Bearer"), None);
    }
}
