//! Reading files again when they change: every interval, and at once on SIGHUP, the
//! conventional "read your files again" signal. The credentials file and the TLS files
//! are watched this way, each by its own [`watch`] (all of them wake on one signal). The
//! reading runs off the async runtime; a file that cannot be used is the reloader's to
//! report, and the previous contents stay in force.

use std::{fmt::Display, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::info;

/// Calls `reload` every `interval`, and on SIGHUP (`forced`), until `stop`. `reload`
/// says whether anything changed (`Ok(true)`) or why the change cannot be used; both
/// are handed to `reported`, an unchanged file is not. `what` names the files in the log.
pub async fn watch<E: Display + Send + 'static>(
    what: &'static str,
    interval: Duration,
    stop: CancellationToken,
    reload: impl Fn(bool) -> Result<bool, E> + Send + Sync + 'static,
    mut reported: impl FnMut(Result<(), String>),
) {
    let reload = Arc::new(reload);
    let mut hangup = Hangup::new();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => false,
            _ = hangup.next() => {
                info!(files = what, "SIGHUP: reading the files again");
                true
            }
        };
        let reading = reload.clone();
        match tokio::task::spawn_blocking(move || reading(forced)).await {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => reported(Ok(())),
            Ok(Err(e)) => reported(Err(e.to_string())),
            Err(e) => reported(Err(e.to_string())),
        }
    }
}

/// A SIGHUP listener (never fires where there is no SIGHUP, or if it cannot be set up).
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    /// Starts listening. From then on SIGHUP no longer ends the process.
    fn new() -> Hangup {
        Hangup {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }

    /// Resolves at the next SIGHUP.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
            // The signal stream ended: no more SIGHUPs, and no busy loop either.
            self.signal = None;
        }
        std::future::pending::<()>().await
    }
}
