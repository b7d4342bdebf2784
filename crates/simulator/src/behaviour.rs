//! What a simulated charge point sends next, per scenario.

use std::{fmt, str::FromStr, time::Duration};

use ocpp::OcppVersion;
use serde_json::Value;

use crate::payloads::{self, ConnectorStatus, TransactionContext, TransactionPhase};

/// The kind of traffic a load generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Charging sessions: plug in, authorize, start, periodic meter values, stop, unplug,
    /// with a heartbeat between sessions.
    Charging,
    /// Heartbeat, StatusNotification and MeterValues in turn: the messages every OCPP
    /// server answers, used to compare servers side by side.
    Telemetry,
    /// Only Heartbeats, at the message rate.
    Heartbeat,
    /// Boot and status, then only heartbeats at the central system's interval: idle
    /// connections for capacity tests.
    Idle,
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "charging" => Ok(Scenario::Charging),
            "telemetry" => Ok(Scenario::Telemetry),
            "heartbeat" => Ok(Scenario::Heartbeat),
            "idle" => Ok(Scenario::Idle),
            other => Err(format!(
                "unknown scenario {other:?}; use charging, telemetry, heartbeat or idle"
            )),
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scenario::Charging => "charging",
            Scenario::Telemetry => "telemetry",
            Scenario::Heartbeat => "heartbeat",
            Scenario::Idle => "idle",
        })
    }
}

/// How often each charge point sends a message of its scenario.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// This many messages per second (may be below 1).
    PerSecond(f64),
    /// The next message as soon as the previous one is answered (closed loop).
    Max,
}

impl Rate {
    /// The time between two scheduled messages; `None` for [`Rate::Max`].
    pub fn interval(self) -> Option<Duration> {
        match self {
            Rate::PerSecond(rate) => Some(Duration::from_secs_f64(1.0 / rate)),
            Rate::Max => None,
        }
    }
}

impl FromStr for Rate {
    type Err = String;

    /// `max`, `2` (per second), `2/s`, `6/min` or `10/h`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "max" {
            return Ok(Rate::Max);
        }
        let (number, per) = text.split_once('/').unwrap_or((text, "s"));
        let seconds = match per {
            "s" => 1.0,
            "min" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("unknown rate unit {other:?}; use /s, /min or /h")),
        };
        let number: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("rate {text:?} is not a number per s, min or h, nor max"))?;
        if !(number.is_finite() && number > 0.0) {
            return Err(format!("rate {text:?} must be above 0"));
        }
        Ok(Rate::PerSecond(number / seconds))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::PerSecond(rate) => write!(f, "{rate}/s"),
            Rate::Max => f.write_str("max"),
        }
    }
}

/// What the session does with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// BootNotification: learn the heartbeat interval, or boot again later.
    Boot,
    /// Authorize: go on only if accepted.
    Authorize,
    /// A transaction start: learn the 1.6 transaction id.
    StartTransaction,
    /// Nothing to learn.
    Plain,
}

/// One CALL to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Action.
    pub action: &'static str,
    /// Payload.
    pub payload: Value,
    /// What the answer means to the charge point.
    pub purpose: Purpose,
}

impl Outgoing {
    fn plain(action: &'static str, payload: Value) -> Self {
        Outgoing {
            action,
            payload,
            purpose: Purpose::Plain,
        }
    }
}

/// Where a charging cycle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Idle,
    Plug,
    Authorize,
    Start,
    Meter(u32),
    Stop,
    Unplug,
}

/// A charge point's behaviour state: survives reconnects, so a transaction goes on.
#[derive(Debug)]
pub struct Behaviour {
    version: OcppVersion,
    scenario: Scenario,
    connectors: u32,
    meter_values_per_transaction: u32,
    id_tag: String,
    charge_point_id: String,
    step: Step,
    turn: u64,
    connector: u32,
    transaction_id: Option<String>,
    transactions: u64,
    seq_no: u32,
    energy_wh: u64,
    remote_tag: Option<String>,
}

/// Power drawn while charging, W (an 11 kW AC charger).
const POWER_W: u32 = 11_000;
/// Energy added between two meter readings, Wh.
const ENERGY_STEP_WH: u64 = 183;

impl Behaviour {
    /// A charge point with `connectors` connectors that is idle.
    pub fn new(
        version: OcppVersion,
        scenario: Scenario,
        connectors: u32,
        meter_values_per_transaction: u32,
        charge_point_id: &str,
        id_tag: String,
    ) -> Self {
        Behaviour {
            version,
            scenario,
            connectors: connectors.max(1),
            meter_values_per_transaction,
            id_tag,
            charge_point_id: charge_point_id.to_owned(),
            step: Step::Idle,
            turn: 0,
            connector: 1,
            transaction_id: None,
            transactions: 0,
            seq_no: 0,
            energy_wh: 0,
            remote_tag: None,
        }
    }

    /// Whether the scenario sends messages at the rate (all but idle).
    pub fn sends_at_rate(&self) -> bool {
        self.scenario != Scenario::Idle
    }

    /// The messages after an accepted boot: one StatusNotification per connector.
    pub fn after_boot(&self) -> Vec<Outgoing> {
        (1..=self.connectors)
            .map(|connector| {
                let status = if self.transaction_id.is_some() && connector == self.connector {
                    ConnectorStatus::Charging
                } else {
                    ConnectorStatus::Available
                };
                Outgoing::plain(
                    "StatusNotification",
                    payloads::status_notification(self.version, connector, status),
                )
            })
            .collect()
    }

    /// The next message of the scenario.
    pub fn next_message(&mut self) -> Outgoing {
        self.turn += 1;
        match self.scenario {
            Scenario::Heartbeat | Scenario::Idle => {
                Outgoing::plain("Heartbeat", payloads::heartbeat())
            }
            Scenario::Telemetry => match self.turn % 3 {
                1 => Outgoing::plain("Heartbeat", payloads::heartbeat()),
                2 => Outgoing::plain(
                    "StatusNotification",
                    payloads::status_notification(self.version, 1, ConnectorStatus::Available),
                ),
                _ => {
                    self.energy_wh += ENERGY_STEP_WH;
                    Outgoing::plain(
                        "MeterValues",
                        payloads::meter_values(self.version, 1, None, self.energy_wh, POWER_W),
                    )
                }
            },
            Scenario::Charging => self.next_charging(),
        }
    }

    fn next_charging(&mut self) -> Outgoing {
        match self.step {
            Step::Idle => {
                self.step = Step::Plug;
                Outgoing::plain("Heartbeat", payloads::heartbeat())
            }
            Step::Plug => {
                self.connector = (self.transactions % u64::from(self.connectors)) as u32 + 1;
                self.step = if self.remote_tag.is_some() {
                    Step::Start
                } else {
                    Step::Authorize
                };
                Outgoing::plain(
                    "StatusNotification",
                    payloads::status_notification(
                        self.version,
                        self.connector,
                        ConnectorStatus::Occupied,
                    ),
                )
            }
            Step::Authorize => Outgoing {
                action: "Authorize",
                payload: payloads::authorize(self.version, &self.id_tag),
                purpose: Purpose::Authorize,
            },
            Step::Start => {
                self.transactions += 1;
                self.seq_no = 0;
                // 2.x charge points name their transactions; 1.6 learns the id from the answer.
                self.transaction_id = self
                    .version
                    .is_2x()
                    .then(|| format!("{}-{}", self.charge_point_id, self.transactions));
                let tag = self
                    .remote_tag
                    .take()
                    .unwrap_or_else(|| self.id_tag.clone());
                let (action, payload) = self.transaction_message(TransactionPhase::Started, &tag);
                self.step = Step::Meter(0);
                Outgoing {
                    action,
                    payload,
                    purpose: Purpose::StartTransaction,
                }
            }
            Step::Meter(done) => {
                self.energy_wh += ENERGY_STEP_WH;
                self.step = if done + 1 >= self.meter_values_per_transaction {
                    Step::Stop
                } else {
                    Step::Meter(done + 1)
                };
                let tag = self.id_tag.clone();
                let (action, payload) = self.transaction_message(TransactionPhase::Updated, &tag);
                Outgoing::plain(action, payload)
            }
            Step::Stop => {
                let tag = self.id_tag.clone();
                let (action, payload) = self.transaction_message(TransactionPhase::Ended, &tag);
                self.transaction_id = None;
                self.step = Step::Unplug;
                Outgoing::plain(action, payload)
            }
            Step::Unplug => {
                self.step = Step::Idle;
                Outgoing::plain(
                    "StatusNotification",
                    payloads::status_notification(
                        self.version,
                        self.connector,
                        ConnectorStatus::Available,
                    ),
                )
            }
        }
    }

    fn transaction_message(&mut self, phase: TransactionPhase, tag: &str) -> (&'static str, Value) {
        let context = TransactionContext {
            connector: self.connector,
            id_tag: tag,
            transaction_id: self.transaction_id.as_deref(),
            seq_no: self.seq_no,
            energy_wh: self.energy_wh,
            power_w: POWER_W,
        };
        self.seq_no += 1;
        payloads::transaction(self.version, phase, &context)
    }

    /// Takes in the answer to a CALL this behaviour produced.
    pub fn answered(&mut self, purpose: Purpose, answer: Option<&Value>) {
        match purpose {
            Purpose::Authorize => {
                self.step = if answer.is_some_and(payloads::id_tag_accepted) {
                    Step::Start
                } else {
                    Step::Unplug
                };
            }
            Purpose::StartTransaction => match answer {
                Some(answer) => {
                    if !self.version.is_2x() {
                        self.transaction_id = payloads::transaction_id_of(answer);
                    }
                    if !payloads::id_tag_accepted(answer) {
                        self.step = Step::Stop;
                    }
                }
                // Refused outright: there is no transaction to stop.
                None => {
                    self.transaction_id = None;
                    self.step = Step::Unplug;
                }
            },
            Purpose::Boot | Purpose::Plain => {}
        }
    }

    /// A remote start: charge with `id_tag` at the next turn, without an Authorize.
    pub fn remote_start(&mut self, id_tag: String) {
        if self.transaction_id.is_none()
            && matches!(self.step, Step::Idle | Step::Plug | Step::Authorize)
        {
            self.remote_tag = Some(id_tag);
            self.step = Step::Plug;
        }
    }

    /// A remote stop: end the transaction at the next turn.
    pub fn remote_stop(&mut self) {
        if matches!(self.step, Step::Meter(_)) {
            self.step = Step::Stop;
        }
    }

    /// Whether no charging session is under way.
    pub fn is_idle(&self) -> bool {
        self.step == Step::Idle
    }

    /// A reboot forgets the transaction in progress.
    pub fn reboot(&mut self) {
        self.step = Step::Idle;
        self.transaction_id = None;
        self.remote_tag = None;
    }

    /// A MeterValues for the connector in use, for TriggerMessage.
    pub fn meter_values_now(&self) -> Outgoing {
        Outgoing::plain(
            "MeterValues",
            payloads::meter_values(
                self.version,
                self.connector,
                self.transaction_id.as_deref(),
                self.energy_wh,
                POWER_W,
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_rates() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("2".parse::<Rate>(), Ok(Rate::PerSecond(2.0)));
        assert_eq!("6/min".parse::<Rate>(), Ok(Rate::PerSecond(0.1)));
        assert!("0".parse::<Rate>().is_err());
        assert!("3/day".parse::<Rate>().is_err());
    }

    #[test]
    fn a_charging_cycle_runs_authorize_start_meter_stop_in_1_6() {
        let mut behaviour = Behaviour::new(
            OcppVersion::V16,
            Scenario::Charging,
            1,
            2,
            "CP",
            "TAG".into(),
        );
        let mut actions = Vec::new();
        for _ in 0..8 {
            let message = behaviour.next_message();
            actions.push(message.action);
            match message.purpose {
                Purpose::Authorize => behaviour.answered(
                    message.purpose,
                    Some(&json!({"idTagInfo": {"status": "Accepted"}})),
                ),
                Purpose::StartTransaction => behaviour.answered(
                    message.purpose,
                    Some(&json!({"transactionId": 42, "idTagInfo": {"status": "Accepted"}})),
                ),
                _ => {}
            }
            if message.action == "StopTransaction" {
                assert_eq!(message.payload["transactionId"], json!(42));
            }
        }
        assert_eq!(
            actions,
            [
                "Heartbeat",
                "StatusNotification",
                "Authorize",
                "StartTransaction",
                "MeterValues",
                "MeterValues",
                "StopTransaction",
                "StatusNotification"
            ]
        );
    }

    #[test]
    fn a_rejected_tag_does_not_start_and_remote_start_skips_authorize() {
        let mut behaviour = Behaviour::new(
            OcppVersion::V201,
            Scenario::Charging,
            2,
            1,
            "CP",
            "TAG".into(),
        );
        behaviour.next_message();
        behaviour.next_message();
        let authorize = behaviour.next_message();
        behaviour.answered(
            authorize.purpose,
            Some(&json!({"idTokenInfo": {"status": "Invalid"}})),
        );
        assert_eq!(behaviour.next_message().action, "StatusNotification");
        behaviour.remote_start("REMOTE".into());
        behaviour.next_message();
        let start = behaviour.next_message();
        assert_eq!(start.action, "TransactionEvent");
        assert_eq!(start.payload["eventType"], json!("Started"));
        assert_eq!(start.payload["idToken"]["idToken"], json!("REMOTE"));
    }
}
