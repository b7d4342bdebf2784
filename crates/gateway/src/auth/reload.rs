//! Reading the credentials file again when someone else changes it: checked every
//! `auth.reload_interval`, and at once on SIGHUP. Open connections are not touched; a
//! file that does not parse leaves the records as they were.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{metrics::AuthMetrics, store::FileStore, CredentialStore};
use crate::hangup::Hangup;

/// Watches `store`'s file until `stop`.
pub async fn watch(
    store: Arc<FileStore>,
    interval: Duration,
    metrics: AuthMetrics,
    stop: CancellationToken,
) {
    let mut hangup = Hangup::new();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
            _ = hangup.next() => info!("SIGHUP: reading the credentials file again"),
        }
        let reading = store.clone();
        let reloaded = tokio::task::spawn_blocking(move || reading.reload()).await;
        match reloaded {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => {
                metrics.reloaded(true, store.len());
                info!(file = %store.path().display(), records = store.len(), "credentials file read again after a change");
            }
            Ok(Err(e)) => {
                metrics.reloaded(false, store.len());
                crate::error_limited!(error = %e, "credentials file changed but cannot be used; the previous records stay in force");
            }
            Err(e) => error!(error = %e, "credentials reload failed"),
        }
    }
}
