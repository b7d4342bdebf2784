//! SIGHUP, the conventional "read your files again" signal, for the reloaders of the
//! credentials file and the TLS files. Each reloader has its own listener; all of them
//! wake on one signal.

/// A SIGHUP listener (never fires where there is no SIGHUP, or if it cannot be set up).
pub struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    /// Starts listening. From then on SIGHUP no longer ends the process.
    pub fn new() -> Hangup {
        Hangup {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }

    /// Resolves at the next SIGHUP.
    pub async fn next(&mut self) {
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

impl Default for Hangup {
    fn default() -> Hangup {
        Hangup::new()
    }
}
