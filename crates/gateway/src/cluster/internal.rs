//! The internal API between the nodes of a cluster, on its own listener
//! (`cluster.internal_address`), every route behind `cluster.internal_token`:
//! - `POST /internal/v1/charge-points/{id}/commands`: deliver a forwarded command if the
//!   session here still has the epoch the forwarder read (409 otherwise);
//! - `POST /internal/v1/charge-points/{id}/takeover`: another node now holds `id`;
//! - `GET /internal/v1/connections` and `GET /internal/v1/connections/{id}`: the
//!   connections held here, for the cluster-wide admin view.
//!
//! The forwarding call returns the outcome, so that the node that read a command writes
//! its one result.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use serde_json::{json, value::RawValue, Value};

use super::Cluster;
use crate::{
    backend::{CommandRejected, CommandRequest, Commander, Delivery, Forwarded, RemoteOwner},
    session::{CallErrorInfo, CallOutcome, QueueMode},
};

/// What the internal API serves from.
pub struct InternalState {
    /// This node.
    pub cluster: Arc<Cluster>,
    /// Delivers forwarded commands to the sessions here.
    pub commander: Arc<Commander>,
}

/// The body of a forwarded command.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardBody {
    /// The epoch the forwarder read from the registry.
    pub epoch: u64,
    /// The OCPP action.
    pub action: String,
    /// The request payload.
    pub payload: Value,
    /// How long the owner waits for the charge point's answer, in milliseconds.
    pub timeout_ms: u64,
    /// Whether to wait for room in a full command queue (Kafka) or fail at once.
    pub wait_for_room: bool,
}

/// The outcome of a forwarded command, as the owner answers it. A struct, not a
/// tagged enum, so that the charge point's response keeps its exact bytes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardAnswer {
    /// `completed`, `callError`, `timeout`, `notConnected`, `queueFull` or `invalid`.
    pub status: String,
    /// The CALLRESULT payload (`completed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Box<RawValue>>,
    /// The CALLERROR (`callError`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CallErrorInfo>,
    /// Why (`invalid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl ForwardAnswer {
    fn of(outcome: Result<CallOutcome, CommandRejected>) -> ForwardAnswer {
        let answer = |status: &str| ForwardAnswer {
            status: status.to_owned(),
            response: None,
            error: None,
            description: None,
        };
        match outcome {
            Ok(CallOutcome::Completed(response)) => ForwardAnswer {
                response: Some(response),
                ..answer("completed")
            },
            Ok(CallOutcome::CallError(error)) => ForwardAnswer {
                error: Some(error),
                ..answer("callError")
            },
            Ok(CallOutcome::Timeout) => answer("timeout"),
            Ok(CallOutcome::NotConnected) => answer("notConnected"),
            Ok(CallOutcome::Unroutable(reason)) => ForwardAnswer {
                description: Some(reason),
                ..answer("notConnected")
            },
            Ok(CallOutcome::QueueFull) => answer("queueFull"),
            Err(rejected) => ForwardAnswer {
                description: Some(rejected.to_string()),
                ..answer("invalid")
            },
        }
    }

    /// The outcome this answer stands for.
    fn outcome(self) -> Result<CallOutcome, String> {
        Ok(match (self.status.as_str(), self.response, self.error) {
            ("completed", Some(response), _) => CallOutcome::Completed(response),
            ("callError", _, Some(error)) => CallOutcome::CallError(error),
            ("timeout", ..) => CallOutcome::Timeout,
            ("notConnected", ..) => match self.description {
                Some(reason) => CallOutcome::Unroutable(reason),
                None => CallOutcome::NotConnected,
            },
            ("queueFull", ..) => CallOutcome::QueueFull,
            // Both nodes check with the same schemas, so this is a version skew.
            ("invalid", ..) => CallOutcome::Unroutable(format!(
                "the owner node refused the command: {}",
                self.description.unwrap_or_default()
            )),
            (status, ..) => return Err(format!("the owner answered an unknown status {status:?}")),
        })
    }
}

/// The body of a takeover announcement.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TakeoverBody {
    /// The epoch of the new claim.
    pub epoch: u64,
    /// The node that now holds the charge point.
    pub node: String,
}

/// A charge point id as one URL path segment.
pub fn path_segment(id: &str) -> String {
    utf8_percent_encode(id, NON_ALPHANUMERIC).to_string()
}

/// Forwards `request` to `owner` and returns its outcome; the owner may take the
/// command's own timeout plus `cluster.forward_timeout`.
pub(super) async fn forward(
    cluster: &Cluster,
    id: &str,
    owner: &RemoteOwner,
    request: &CommandRequest,
    mode: QueueMode,
) -> Forwarded {
    let timeout = request.timeout.unwrap_or_default() + cluster.config.forward_timeout;
    let body = ForwardBody {
        epoch: owner.epoch,
        action: request.action.clone(),
        payload: request.payload.clone(),
        timeout_ms: request.timeout.unwrap_or_default().as_millis() as u64,
        wait_for_room: mode == QueueMode::Wait,
    };
    let url = format!(
        "{}/internal/v1/charge-points/{}/commands",
        owner.url,
        path_segment(id)
    );
    let response = match cluster
        .internal_request(reqwest::Method::POST, url)
        .timeout(timeout)
        .json(&body)
        .send()
        .await
    {
        Ok(response) => response,
        Err(e) => return Forwarded::Failed(e.to_string()),
    };
    match response.status() {
        StatusCode::OK => match response.json::<ForwardAnswer>().await {
            Ok(answer) => match answer.outcome() {
                Ok(outcome) => Forwarded::Outcome(outcome),
                Err(e) => Forwarded::Failed(e),
            },
            Err(e) => Forwarded::Failed(format!("unreadable answer: {e}")),
        },
        StatusCode::CONFLICT => Forwarded::StaleEpoch,
        status => Forwarded::Failed(format!("answered HTTP {status}")),
    }
}

/// The internal API's routes.
pub fn router(state: Arc<InternalState>) -> Router {
    Router::new()
        .route("/internal/v1/charge-points/{id}/commands", post(deliver))
        .route("/internal/v1/charge-points/{id}/takeover", post(takeover))
        .route("/internal/v1/connections", get(list))
        .route("/internal/v1/connections/{id}", get(one))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state)
}

async fn require_token(
    State(state): State<Arc<InternalState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !crate::http_server::bearer_matches(request.headers(), state.cluster.token()) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong internal token");
    }
    next.run(request).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn deliver(
    State(state): State<Arc<InternalState>>,
    Path(id): Path<String>,
    body: Result<Json<ForwardBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return error(StatusCode::BAD_REQUEST, "malformed forwarded command");
    };
    let timeout = Duration::from_millis(body.timeout_ms.clamp(1, 3_600_000));
    let request = match CommandRequest::new(body.action, body.payload, None) {
        Ok(request) => CommandRequest {
            timeout: Some(timeout),
            ..request
        },
        Err(rejected) => return Json(ForwardAnswer::of(Err(rejected))).into_response(),
    };
    let mode = match body.wait_for_room {
        true => QueueMode::Wait,
        false => QueueMode::FailFast,
    };
    match state
        .commander
        .deliver_forwarded(&id, body.epoch, &request, mode)
        .await
    {
        Delivery::Done(outcome) => Json(ForwardAnswer::of(outcome)).into_response(),
        Delivery::StaleEpoch => {
            state.cluster.metrics().stale_epoch_refused();
            error(
                StatusCode::CONFLICT,
                format!(
                    "charge point {id} is not held here under epoch {}",
                    body.epoch
                ),
            )
        }
    }
}

async fn takeover(
    State(state): State<Arc<InternalState>>,
    Path(id): Path<String>,
    body: Result<Json<TakeoverBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return error(StatusCode::BAD_REQUEST, "malformed takeover");
    };
    state.cluster.taken_over(&id, body.epoch);
    StatusCode::NO_CONTENT.into_response()
}

/// The query of a listing page.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    /// Most entries.
    pub limit: Option<usize>,
    /// Only ids after this one.
    pub after: Option<String>,
}

async fn list(State(state): State<Arc<InternalState>>, Query(query): Query<PageQuery>) -> Response {
    let limit = query.limit.unwrap_or(100).clamp(1, 1001);
    let cluster = &state.cluster;
    let page = cluster.sessions().page(query.after.as_deref(), limit);
    Json(json!({
        "total": cluster.sessions().len(),
        "connections": page.iter().map(|h| h.describe(cluster.node())).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn one(State(state): State<Arc<InternalState>>, Path(id): Path<String>) -> Response {
    match state.cluster.sessions().get(&id) {
        Some(handle) => Json(handle.describe(state.cluster.node())).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("charge point {id} is not connected here"),
        ),
    }
}

/// A page of another node's connections.
pub async fn fetch_page(
    cluster: &Cluster,
    url: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(usize, Vec<Value>), String> {
    let mut query = vec![("limit", limit.to_string())];
    if let Some(after) = after {
        query.push(("after", after.to_owned()));
    }
    let response = cluster
        .internal_request(
            reqwest::Method::GET,
            format!("{url}/internal/v1/connections"),
        )
        .query(&query)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| e.to_string())?;
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    let total = body["total"].as_u64().unwrap_or(0) as usize;
    let connections = body["connections"].as_array().cloned().unwrap_or_default();
    Ok((total, connections))
}

/// One connection held by another node, if it is still there.
pub async fn fetch_one(cluster: &Cluster, url: &str, id: &str) -> Result<Option<Value>, String> {
    let response = cluster
        .internal_request(
            reqwest::Method::GET,
            format!("{url}/internal/v1/connections/{}", path_segment(id)),
        )
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let response = response.error_for_status().map_err(|e| e.to_string())?;
    response.json().await.map(Some).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_response_keeps_its_bytes() {
        let response = RawValue::from_string(r#"{"z":1,"a":2.50}"#.to_owned()).unwrap();
        let answer = ForwardAnswer::of(Ok(CallOutcome::Completed(response)));
        let wire = serde_json::to_string(&answer).unwrap();
        let back: ForwardAnswer = serde_json::from_str(&wire).unwrap();
        match back.outcome() {
            Ok(CallOutcome::Completed(response)) => {
                assert_eq!(response.get(), r#"{"z":1,"a":2.50}"#)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_outcome_survives_the_wire() {
        let outcomes = [
            CallOutcome::Timeout,
            CallOutcome::NotConnected,
            CallOutcome::QueueFull,
            CallOutcome::Unroutable("gone".into()),
        ];
        for outcome in outcomes {
            let status = outcome.status();
            let wire = serde_json::to_string(&ForwardAnswer::of(Ok(outcome))).unwrap();
            let back: ForwardAnswer = serde_json::from_str(&wire).unwrap();
            assert_eq!(back.outcome().unwrap().status(), status);
        }
        let unknown: ForwardAnswer = serde_json::from_str(r#"{"status":"weird"}"#).unwrap();
        assert!(unknown.outcome().is_err());
    }

    #[test]
    fn ids_are_one_path_segment() {
        assert_eq!(path_segment("CP/1 x"), "CP%2F1%20x");
    }
}
