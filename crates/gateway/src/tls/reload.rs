//! Rebuilding the TLS context when its files change: checked every
//! `tls.reload_interval`, and at once on SIGHUP. New connections use the new context;
//! open ones keep their sessions.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{metrics::TlsMetrics, modification_times, TlsServer};
use crate::hangup::Hangup;

/// Watches `server`'s files until `stop`.
pub async fn watch(server: Arc<TlsServer>, metrics: TlsMetrics, stop: CancellationToken) {
    let files = server.files();
    let mut seen = modification_times(&files);
    let mut hangup = Hangup::new();
    let mut ticks = tokio::time::interval(
        server
            .config()
            .reload_interval
            .max(Duration::from_millis(10)),
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => false,
            _ = hangup.next() => true,
        };
        let now = modification_times(&files);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        let rebuilding = server.clone();
        match tokio::task::spawn_blocking(move || rebuilding.reload()).await {
            Ok(Ok(())) => {
                metrics.reloaded(true);
                info!("TLS certificates and keys read again");
            }
            Ok(Err(e)) => {
                metrics.reloaded(false);
                crate::error_limited!(error = %e, "TLS files changed but cannot be used; the previous ones stay in force");
            }
            Err(e) => {
                metrics.reloaded(false);
                crate::error_limited!(error = %e, "TLS reload failed");
            }
        }
    }
}
