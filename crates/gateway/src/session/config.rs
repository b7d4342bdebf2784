//! The `[session]` section: how each charge point connection behaves.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config_check::InvalidOption;

/// Per-connection behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// How long a gateway-initiated CALL waits for its response.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Gateway-to-charge-point CALLs that may wait behind the one in flight.
    pub call_queue_size: usize,
    /// Charge point CALLs read ahead while one is being processed; when full, the
    /// gateway stops reading the socket (TCP backpressure).
    pub inbound_queue_size: usize,
    /// Interval between server WebSocket pings (`0s` disables pings).
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long to wait for a pong before the connection is considered dead.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Consecutive bad messages after which the connection is closed (1008).
    pub bad_message_limit: u32,
    /// Messages a charge point may send per second on average, in bursts of one second's
    /// worth; beyond it the gateway reads its socket later (TCP slows it down). `0`: no
    /// limit.
    pub max_messages_per_second: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(30),
            call_queue_size: 8,
            inbound_queue_size: 4,
            ping_interval: Duration::from_secs(60),
            pong_timeout: Duration::from_secs(30),
            bad_message_limit: 10,
            max_messages_per_second: 200,
        }
    }
}

impl SessionConfig {
    /// Checks values that are well-typed but unusable.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        let invalid = InvalidOption::new;
        if self.call_timeout.is_zero() {
            return Err(invalid("session.call_timeout", "must be greater than zero"));
        }
        if !(1..=1024).contains(&self.call_queue_size) {
            return Err(invalid(
                "session.call_queue_size",
                "must be between 1 and 1024",
            ));
        }
        if !(1..=1024).contains(&self.inbound_queue_size) {
            return Err(invalid(
                "session.inbound_queue_size",
                "must be between 1 and 1024",
            ));
        }
        if !self.ping_interval.is_zero() && self.pong_timeout.is_zero() {
            return Err(invalid(
                "session.pong_timeout",
                "must be greater than zero while pings are on",
            ));
        }
        if self.bad_message_limit == 0 {
            return Err(invalid("session.bad_message_limit", "must be at least 1"));
        }
        Ok(())
    }
}
