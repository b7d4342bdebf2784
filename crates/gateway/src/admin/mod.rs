//! The admin HTTP API: health, connections, commands and recent events.
//!
//! Every error is a JSON body `{"error": "...", ...}` with a fitting status; see
//! docs/admin-api.md.

pub mod config;
mod credentials;
mod profile;

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{rejection::JsonRejection, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    backend::{CommandError, CommandRejected, CommandReport, CommandRequest, Commander},
    handshake::check_charge_point_id,
    health::Health,
    labels::{CommandSource, CommandStatus, DisconnectReason},
    metrics::{any_version_action_label, Metrics},
    registry::Registry,
    session::QueueMode,
    sink::ring::EventRing,
    telemetry::debug_trace::DebugTraces,
};

/// Largest page of `GET /api/v1/connections`.
const MAX_PAGE: usize = 1000;

/// What the admin API reads and acts on.
pub struct AdminState {
    /// Readiness and the components' state.
    pub health: Arc<Health>,
    /// The sessions of this instance.
    pub sessions: Arc<Registry>,
    /// Sends commands.
    pub commander: Arc<Commander>,
    /// The most recent events.
    pub ring: Arc<EventRing>,
    /// Per-charge-point frame logging.
    pub debug_traces: Arc<DebugTraces>,
    /// The traffic metrics (`ocppgw_commands_total`).
    pub metrics: Arc<Metrics>,
    /// `admin.api_token`.
    pub api_token: Option<String>,
    /// `listener.max_charge_point_id_length`: longer ids can never connect.
    pub max_charge_point_id_length: usize,
    /// Charge point authentication and its credential store.
    pub auth: Arc<crate::auth::Authenticator>,
    /// This node in its cluster, when clustering is on.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// This node's id (`node_id`).
    pub node_id: String,
    /// What `GET /api/v1/debug/profile` may do.
    pub profiling: config::Profiling,
}

/// The admin API's routes.
pub fn router(admin: Arc<AdminState>) -> Router {
    let api = Router::new()
        .route("/api/v1/connections", get(list_connections))
        .route(
            "/api/v1/connections/{id}",
            get(get_connection).delete(disconnect),
        )
        .route("/api/v1/charge-points/{id}/commands", post(send_command))
        .route(
            "/api/v1/charge-points/{id}/credentials",
            get(credentials::get_credentials)
                .put(credentials::put_credentials)
                .delete(credentials::delete_credentials),
        )
        .route(
            "/api/v1/charge-points/{id}/credentials/rotate",
            post(credentials::rotate_credentials),
        )
        .route("/api/v1/events", get(recent_events))
        .route("/api/v1/log-level", get(get_log_level).put(put_log_level))
        .route("/api/v1/debug-traces", get(list_debug_traces))
        .route("/api/v1/debug/profile", get(profile::profile))
        .route(
            "/api/v1/charge-points/{id}/debug-trace",
            axum::routing::put(start_debug_trace).delete(stop_debug_trace),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            require_token,
        ));
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .merge(api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(admin)
}

/// Checks `Authorization: Bearer <admin.api_token>` when a token is configured.
async fn require_token(
    State(admin): State<Arc<AdminState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = &admin.api_token {
        if !crate::http_server::bearer_matches(request.headers(), token) {
            let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn livez() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(admin): State<Arc<AdminState>>) -> Response {
    match admin.health.readiness() {
        Ok(()) => Json(json!({ "ready": true })).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

async fn health(State(admin): State<Arc<AdminState>>) -> Response {
    Json(admin.health.report()).into_response()
}

/// The `limit` of a listing: 100 by default, at most `MAX_PAGE`.
fn page_limit(limit: Option<usize>) -> Result<usize, String> {
    let limit = limit.unwrap_or(100);
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(format!("limit must be between 1 and {MAX_PAGE}"))
    }
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    after: Option<String>,
    scope: Option<String>,
}

async fn list_connections(
    State(admin): State<Arc<AdminState>>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "limit must be a whole number");
    };
    let limit = match page_limit(query.limit) {
        Ok(limit) => limit,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let cluster_wide = match query.scope.as_deref() {
        None | Some("node") => false,
        Some("cluster") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("scope must be node or cluster, not {other:?}"),
            )
        }
    };
    let after = query.after.as_deref();
    // One extra tells whether another page follows.
    let mut page: Vec<Value> = admin
        .sessions
        .page(after, limit + 1)
        .iter()
        .map(|handle| handle.describe(&admin.node_id))
        .collect();
    let mut total = admin.sessions.len();
    let mut unreachable = Vec::new();
    if let (true, Some(cluster)) = (cluster_wide, &admin.cluster) {
        let peers = match cluster.peers().await {
            Ok(peers) => peers,
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the cluster registry is unavailable: {e}"),
                )
            }
        };
        // Each node's first page after the cursor, merged: the cluster's page.
        for (node, url) in peers {
            match crate::cluster::internal::fetch_page(cluster, &url, after, limit + 1).await {
                Ok((count, connections)) => {
                    total += count;
                    page.extend(connections);
                }
                Err(e) => unreachable.push(json!({ "node": node, "error": e })),
            }
        }
        page.sort_by(|a, b| {
            a["chargePointId"]
                .as_str()
                .cmp(&b["chargePointId"].as_str())
        });
    }
    let more = page.len() > limit;
    page.truncate(limit);
    let next_after = more
        .then(|| {
            page.last()
                .and_then(|c| c["chargePointId"].as_str())
                .map(str::to_owned)
        })
        .flatten();
    let mut body = json!({
        "total": total,
        "connections": page,
        "nextAfter": next_after,
    });
    if cluster_wide {
        body["unreachableNodes"] = json!(unreachable);
    }
    Json(body).into_response()
}

async fn get_connection(State(admin): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    if let Some(handle) = admin.sessions.get(&id) {
        return Json(handle.describe(&admin.node_id)).into_response();
    }
    let not_connected = || {
        error(
            StatusCode::NOT_FOUND,
            format!("charge point {id} is not connected"),
        )
    };
    let Some(cluster) = &admin.cluster else {
        return not_connected();
    };
    match cluster.owner_elsewhere(&id).await {
        Ok(Some((node, url))) => match crate::cluster::internal::fetch_one(cluster, &url, &id).await {
            Ok(Some(connection)) => Json(connection).into_response(),
            Ok(None) => not_connected(),
            Err(e) => error(
                StatusCode::BAD_GATEWAY,
                format!("charge point {id} is held by node {node}, which did not answer: {e}"),
            ),
        },
        Ok(None) => not_connected(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("charge point {id} is not connected to this node and the cluster registry is unavailable: {e}"),
        ),
    }
}

async fn disconnect(State(admin): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    match admin.sessions.get(&id) {
        Some(handle) => {
            handle.close(DisconnectReason::DisconnectedByOperator);
            (
                StatusCode::ACCEPTED,
                Json(json!({ "chargePointId": id, "status": "closing" })),
            )
                .into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("charge point {id} is not connected"),
        ),
    }
}

/// The body of `POST /api/v1/charge-points/{id}/commands`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CommandBody {
    action: String,
    payload: Value,
    timeout_seconds: Option<u64>,
}

async fn send_command(
    State(admin): State<Arc<AdminState>>,
    Path(id): Path<String>,
    body: Result<Json<CommandBody>, JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(body)) => CommandRequest::new(body.action, body.payload, body.timeout_seconds),
        Err(rejection) => Err(CommandRejected::Malformed(rejection.body_text())),
    };
    let (action, outcome) = match request {
        Ok(request) => (
            any_version_action_label(&request.action),
            admin
                .commander
                .send(&id, &request, QueueMode::FailFast)
                .await,
        ),
        Err(rejected) => (crate::metrics::OTHER, Err(rejected)),
    };
    let report = CommandReport::of(&id, outcome);
    admin
        .metrics
        .command(CommandSource::Admin, action, report.status);
    let status_code = match report.status {
        CommandStatus::Completed | CommandStatus::CallError => StatusCode::OK,
        CommandStatus::Invalid => StatusCode::BAD_REQUEST,
        CommandStatus::Timeout | CommandStatus::Expired => StatusCode::GATEWAY_TIMEOUT,
        CommandStatus::NotConnected => StatusCode::NOT_FOUND,
        CommandStatus::QueueFull => StatusCode::TOO_MANY_REQUESTS,
        CommandStatus::Unknown => StatusCode::BAD_GATEWAY,
    };
    let mut body = json!({ "status": report.status.as_str() });
    if let Some(response) = report.response {
        body["response"] = json!(response);
    }
    match report.error {
        None => {}
        Some(CommandError::Call(info)) => body["error"] = json!(info),
        Some(CommandError::Rejected {
            description,
            violations,
        }) => {
            body["error"] = json!(description);
            if let Some(violations) = violations {
                body["violations"] = violations;
            }
        }
        Some(CommandError::Described(description)) => body["error"] = json!(description),
    }
    (status_code, Json(body)).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventsQuery {
    charge_point_id: Option<String>,
    limit: Option<usize>,
}

async fn recent_events(
    State(admin): State<Arc<AdminState>>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "limit must be a whole number");
    };
    let limit = match page_limit(query.limit) {
        Ok(limit) => limit,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    // Serialised straight from the events (not through `Value`), so payloads keep the
    // exact text the charge point sent.
    #[derive(serde::Serialize)]
    struct Events {
        events: Vec<Arc<crate::event::Event>>,
    }
    let events = admin.ring.recent(query.charge_point_id.as_deref(), limit);
    Json(Events { events }).into_response()
}

async fn get_log_level() -> Response {
    match crate::telemetry::log_level() {
        Some(level) => Json(json!({ "level": level })).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "log level control is not available in this process",
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLevelRequest {
    level: String,
}

async fn put_log_level(body: Result<Json<LogLevelRequest>, JsonRejection>) -> Response {
    let request = match body {
        Ok(Json(request)) if !request.level.trim().is_empty() => request,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "expected {\"level\": \"<filter>\"} with a non-empty filter",
            )
        }
    };
    match crate::telemetry::set_log_level(&request.level) {
        Ok(()) => {
            tracing::info!(filter = %request.level, "log level changed");
            Json(json!({ "level": request.level })).into_response()
        }
        Err(e @ crate::telemetry::LogLevelError::Invalid(_)) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Longest debug trace, in minutes.
const MAX_DEBUG_TRACE_MINUTES: u64 = 60;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DebugTraceRequest {
    minutes: u64,
}

async fn start_debug_trace(
    State(admin): State<Arc<AdminState>>,
    Path(id): Path<String>,
    body: Result<Json<DebugTraceRequest>, JsonRejection>,
) -> Response {
    if let Err(refusal) = check_charge_point_id(&id, admin.max_charge_point_id_length) {
        // No charge point can connect under this id, so a trace for it would never log.
        return error(StatusCode::BAD_REQUEST, refusal.to_string());
    }
    let minutes = match body {
        Ok(Json(request)) if (1..=MAX_DEBUG_TRACE_MINUTES).contains(&request.minutes) => {
            request.minutes
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"minutes\": 1..{MAX_DEBUG_TRACE_MINUTES}}}"),
            )
        }
    };
    let until = admin
        .debug_traces
        .start(&id, Duration::from_secs(minutes * 60));
    tracing::info!(charge_point_id = %id, %until, "debug trace started");
    Json(json!({ "chargePointId": id, "until": until })).into_response()
}

async fn stop_debug_trace(
    State(admin): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Response {
    if admin.debug_traces.stop(&id) {
        tracing::info!(charge_point_id = %id, "debug trace stopped");
        Json(json!({ "chargePointId": id, "stopped": true })).into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("no debug trace for {id}"))
    }
}

async fn list_debug_traces(State(admin): State<Arc<AdminState>>) -> Json<Value> {
    let traces: Vec<Value> = admin
        .debug_traces
        .list()
        .into_iter()
        .map(|(id, until)| json!({ "chargePointId": id, "until": until }))
        .collect();
    Json(json!({ "debugTraces": traces }))
}
