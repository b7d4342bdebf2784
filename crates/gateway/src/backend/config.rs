//! The `[backend]` section: which charge point CALLs the backend answers, and what
//! happens when it does not answer in time.

use std::{collections::BTreeMap, time::Duration};

use ocpp::OcppVersion;
use serde::{Deserialize, Serialize};

use crate::config_check::InvalidOption;

/// What a charge point gets when the backend does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyFallback {
    /// The local responder's answer.
    Local,
    /// A CALLERROR (InternalError); the charge point retries.
    Error,
}

/// Actions answered by the backend (only while Kafka is on).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    /// Charge point actions whose answer comes from the backend via the replies topic.
    pub actions: Vec<String>,
    /// How long to wait for the backend's reply.
    #[serde(with = "humantime_serde")]
    pub reply_timeout: Duration,
    /// What the charge point gets when no valid reply arrives in time.
    pub on_timeout: ReplyFallback,
    /// Per-action overrides of `on_timeout`.
    pub on_timeout_by_action: BTreeMap<String, ReplyFallback>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            actions: ["Authorize", "StartTransaction", "DataTransfer"]
                .map(String::from)
                .to_vec(),
            reply_timeout: Duration::from_secs(10),
            on_timeout: ReplyFallback::Local,
            // A locally invented transaction id would be unknown to the backend: let the
            // charge point retry StartTransaction instead.
            on_timeout_by_action: [("StartTransaction".to_owned(), ReplyFallback::Error)]
                .into_iter()
                .collect(),
        }
    }
}

impl BackendConfig {
    /// The fallback for `action` when the backend does not answer.
    pub fn fallback_for(&self, action: &str) -> ReplyFallback {
        self.on_timeout_by_action
            .get(action)
            .copied()
            .unwrap_or(self.on_timeout)
    }
}

impl BackendConfig {
    /// Checks values that are well-typed but unusable.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        let invalid = InvalidOption::new;
        let not_an_action = |action: &String| {
            !OcppVersion::ALL.into_iter().any(|version| {
                ocpp::catalogue::initiator(version, action)
                    .is_some_and(|i| i.charge_point_may_send())
            })
        };
        if let Some(unknown) = self.actions.iter().find(|a| not_an_action(a)) {
            return Err(InvalidOption {
                option: "backend.actions",
                reason: format!("{unknown:?} is not an action charge points send"),
            });
        }
        if let Some(unknown) = self.on_timeout_by_action.keys().find(|a| not_an_action(a)) {
            return Err(InvalidOption {
                option: "backend.on_timeout_by_action",
                reason: format!("{unknown:?} is not an action charge points send"),
            });
        }
        if self.reply_timeout.is_zero() {
            return Err(invalid(
                "backend.reply_timeout",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}
