//! CPU profiles of the running gateway, as the system it replaces had with Go's pprof:
//! `GET /api/v1/debug/profile?seconds=N&format=svg|collapsed` samples every thread's
//! stack 99 times a second of CPU time (SIGPROF) for N seconds and answers a flame graph
//! (SVG) or the collapsed stacks it is drawn from (one line per stack, for inferno,
//! speedscope or flamegraph.pl). Off unless `admin.profiling`; behind the admin token like
//! the rest of the API; one profile at a time.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use axum::{
    extract::{Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{error, AdminState};

/// Samples per second of CPU time: not a multiple of common timer rates, so that
/// periodic work is not sampled in lockstep.
const FREQUENCY: i32 = 99;

/// Whether a profile is being taken (the SIGPROF handler is process-wide).
static SAMPLING: AtomicBool = AtomicBool::new(false);

/// The query of a profile request.
#[derive(Debug, Deserialize)]
pub struct ProfileQuery {
    seconds: Option<u64>,
    format: Option<String>,
}

/// Clears [`SAMPLING`] however the request ends.
struct Sampling;

impl Drop for Sampling {
    fn drop(&mut self) {
        SAMPLING.store(false, Ordering::Release);
    }
}

pub(super) async fn profile(
    State(admin): State<std::sync::Arc<AdminState>>,
    query: Result<Query<ProfileQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !admin.profiling.enabled {
        return error(
            StatusCode::NOT_FOUND,
            "profiling is off: set admin.profiling = true to allow it",
        );
    }
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "seconds must be a whole number");
    };
    let max = admin.profiling.max_seconds;
    let seconds = query.seconds.unwrap_or(10);
    if !(1..=max).contains(&seconds) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("seconds must be between 1 and {max}"),
        );
    }
    let svg = match query.format.as_deref() {
        None | Some("svg") => true,
        Some("collapsed") => false,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("format must be svg or collapsed, not {other:?}"),
            )
        }
    };
    if SAMPLING.swap(true, Ordering::AcqRel) {
        return error(StatusCode::CONFLICT, "a profile is already being taken");
    }
    let sampling = Sampling;
    tracing::info!(seconds, "CPU profile started");
    // The profiler's guard is not Send: it lives on a blocking thread for the duration.
    let taken = tokio::task::spawn_blocking(move || {
        let _sampling = sampling;
        take(Duration::from_secs(seconds))
    })
    .await;
    let lines = match taken {
        Ok(Ok(lines)) => lines,
        Ok(Err(e)) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the profiler failed: {e}"),
            )
        }
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the profiler failed: {e}"),
            )
        }
    };
    tracing::info!(seconds, stacks = lines.len(), "CPU profile taken");
    if lines.is_empty() {
        // No CPU time was spent while sampling: there is nothing to draw.
        return StatusCode::NO_CONTENT.into_response();
    }
    if !svg {
        return (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            lines.join("\n") + "\n",
        )
            .into_response();
    }
    let mut options = pprof::flamegraph::Options::default();
    options.title = format!("charge-point-gateway CPU, {seconds} s at {FREQUENCY} Hz");
    let mut out = Vec::new();
    match pprof::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut out) {
        Ok(()) => ([(header::CONTENT_TYPE, "image/svg+xml")], out).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the flame graph could not be drawn: {e}"),
        ),
    }
}

/// Samples for `duration` (blocking) and returns the collapsed stacks: `thread;outer;...;inner count`.
fn take(duration: Duration) -> Result<Vec<String>, pprof::Error> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()?;
    std::thread::sleep(duration);
    let report = guard.report().build()?;
    drop(guard);
    let mut lines: Vec<String> = report
        .data
        .iter()
        .map(|(frames, count)| {
            let mut line = frames.thread_name_or_id().replace([';', ' '], "_");
            for frame in frames.frames.iter().rev() {
                for symbol in frame.iter().rev() {
                    let _ = write!(line, ";{}", symbol.to_string().replace([';', ' '], "_"));
                }
            }
            let _ = write!(line, " {count}");
            line
        })
        .collect();
    lines.sort();
    Ok(lines)
}
