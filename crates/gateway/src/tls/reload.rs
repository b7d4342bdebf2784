//! Rebuilding the TLS context when its files change: checked every
//! `tls.reload_interval`, and at once on SIGHUP. New connections use the new context;
//! open ones keep their sessions.

use std::{sync::Arc, time::Duration};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{modification_times, TlsServer};

/// Watches `server`'s files until `stop`.
pub async fn watch(server: Arc<TlsServer>, stop: CancellationToken) {
    let files = server.files();
    let seen = Mutex::new(modification_times(&files));
    let reporting = server.clone();
    let interval = server
        .config()
        .reload_interval
        .max(Duration::from_millis(10));
    crate::file_watch::watch(
        "TLS",
        interval,
        stop,
        move |forced| {
            let now = modification_times(&files);
            let mut seen = seen.lock();
            if !forced && *seen == now {
                return Ok(false);
            }
            *seen = now;
            server.reload().map(|()| true)
        },
        move |result| match result {
            Ok(()) => {
                reporting.metrics.reloaded(true);
                info!("TLS certificates and keys read again");
            }
            Err(e) => {
                reporting.metrics.reloaded(false);
                crate::error_limited!(error = %e, "TLS files changed but cannot be used; the previous ones stay in force");
            }
        },
    )
    .await;
}
