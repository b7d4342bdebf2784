//! Reading the credentials file again when someone else changes it: checked every
//! `auth.reload_interval`, and at once on SIGHUP. Open connections are not touched; a
//! file that does not parse leaves the records as they were.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{metrics::AuthMetrics, store::FileStore, CredentialStore};

/// Watches `store`'s file until `stop`.
pub async fn watch(
    store: Arc<FileStore>,
    interval: Duration,
    metrics: AuthMetrics,
    stop: CancellationToken,
) {
    let reading = store.clone();
    crate::file_watch::watch(
        "credentials",
        interval,
        stop,
        move |_| reading.reload(),
        move |result| match result {
            Ok(()) => {
                metrics.reloaded(true, store.len());
                info!(file = %store.path().display(), records = store.len(), "credentials file read again after a change");
            }
            Err(e) => {
                metrics.reloaded(false, store.len());
                crate::error_limited!(error = %e, "credentials file changed but cannot be used; the previous records stay in force");
            }
        },
    )
    .await;
}
