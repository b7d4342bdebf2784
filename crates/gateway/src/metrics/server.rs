//! `GET /metrics` on its own listener (default `:9090`, the original system's port).

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, HeaderMap},
    response::IntoResponse,
    routing::get,
    Router,
};

use super::MetricsRegistry;

/// The OpenMetrics content type.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for clients that do not ask for OpenMetrics.
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a scrape reads: the registry, and the gauges to bring up to date first.
pub struct Scrape {
    /// Every registered metric.
    pub registry: Arc<MetricsRegistry>,
    /// Sets the gauges that are read rather than counted.
    pub refresh: Box<dyn Fn() + Send + Sync>,
}

/// The metrics routes.
pub fn router(scrape_state: Arc<Scrape>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(scrape_state)
}

async fn scrape(State(state): State<Arc<Scrape>>, headers: HeaderMap) -> impl IntoResponse {
    (state.refresh)();
    let text = state.registry.encode();
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"));
    if wants_openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], text)
    } else {
        ([(header::CONTENT_TYPE, CLASSIC)], to_classic(&text))
    }
}

/// Rewrites OpenMetrics text as the classic Prometheus text format: counter families
/// are named with their `_total`, and exemplars, units and `# EOF` are dropped.
fn to_classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut classic = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(line) => classic.push_str(&line),
            None if line.starts_with('#') => classic.push_str(line),
            // A sample: drop its exemplar (" # {...} value").
            None => classic.push_str(line.split_once(" # ").map_or(line, |(sample, _)| sample)),
        }
        classic.push('\n');
    }
    classic
}

#[cfg(test)]
mod tests {
    use super::to_classic;

    #[test]
    fn classic_text_names_counters_with_total_and_drops_exemplars() {
        let openmetrics =
            "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total 3\n\
            # HELP b_seconds Latency.\n# TYPE b_seconds histogram\n\
            b_seconds_bucket{le=\"0.1\"} 1 # {trace_id=\"abc\"} 0.05\n# EOF\n";
        assert_eq!(
            to_classic(openmetrics),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total 3\n\
             # HELP b_seconds Latency.\n# TYPE b_seconds histogram\nb_seconds_bucket{le=\"0.1\"} 1\n"
        );
    }
}
