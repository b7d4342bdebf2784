//! `GET /metrics` on its own listener (default `:9090`, the original system's port).

use std::sync::Arc;

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};

use crate::gateway::Shared;

/// The OpenMetrics content type.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(shared)
}

async fn scrape(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared.refresh_gauges();
    (
        [(header::CONTENT_TYPE, OPENMETRICS)],
        shared.metrics.encode(),
    )
}
