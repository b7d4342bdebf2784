//! One simulated charge point in a load: connects, boots, sends its scenario's messages at
//! its rate, answers the central system, and reconnects with backoff when the link drops.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use ocpp::{Frame, OcppVersion};
use serde_json::Value;
use tokio::{
    sync::watch,
    time::{sleep_until, Instant},
};
use tokio_tungstenite::tungstenite::{
    protocol::{frame::coding::CloseCode, CloseFrame},
    Message,
};

use crate::{
    answers::{self, Configuration, FollowUp, Trigger},
    behaviour::{Behaviour, Outgoing, Purpose, Rate, Scenario},
    connect::{Connector, Socket},
    frames,
    payloads::{self, Identity},
    stats::Stats,
};

/// Settings every charge point of a load shares.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The traffic.
    pub scenario: Scenario,
    /// Messages per second per charge point.
    pub rate: Rate,
    /// Heartbeat interval; `None` takes the one in the BootNotification answer, zero
    /// sends none.
    pub heartbeat_interval: Option<Duration>,
    /// Connectors (EVSEs in 2.x) per charge point.
    pub connectors: u32,
    /// Meter readings per charging session.
    pub meter_values_per_transaction: u32,
    /// How long to wait for an answer.
    pub call_timeout: Duration,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// Count an echoed CALL as its answer (the bare echo baseline).
    pub echo_baseline: bool,
    /// Vendor, model, firmware.
    pub identity: Identity,
}

/// Reconnect timing, after OCPP 2.x's `RetryBackOff*` variables: the n-th attempt in a row
/// waits `min(minimum × 2^(n-1), maximum)` plus a random part of up to `jitter`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// `RetryBackOffWaitMinimum`.
    pub minimum: Duration,
    /// The longest wait before the random part.
    pub maximum: Duration,
    /// `RetryBackOffRandomRange`.
    pub jitter: Duration,
}

impl Backoff {
    /// The wait before attempt number `attempt` (1 = first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doubling = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        let base = self.minimum.saturating_mul(doubling).min(self.maximum);
        base + self.jitter.mul_f64(fastrand::f64())
    }
}

/// What the run asks of every charge point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Control {
    /// Close and end.
    pub stop: bool,
    /// Incremented to drop every connection at once (a reconnect storm).
    pub storm: u32,
}

/// Why a connection ended.
enum End {
    /// The run is over.
    Stop,
    /// A storm was ordered.
    Storm,
    /// A Reset asked for a reboot.
    Reboot,
    /// The central system closed, or the link failed; the label says how.
    Lost(&'static str),
}

/// A charge point's identity in the load.
pub struct ChargePoint {
    /// Position in the fleet, from 0; picks the source address and stats shard.
    pub index: usize,
    /// Its number (in its id); the RFID tag it charges with is derived from it.
    pub number: usize,
    /// Its id in the URL.
    pub id: String,
    /// Its OCPP version.
    pub version: OcppVersion,
}

/// Runs one charge point until the run stops.
pub async fn run(
    charge_point: ChargePoint,
    connector: Arc<Connector>,
    profile: Arc<Profile>,
    stats: Arc<Stats>,
    mut control: watch::Receiver<Control>,
) {
    let mut state = State::new(&charge_point, profile.clone(), stats.clone());
    let ChargePoint {
        index, id, version, ..
    } = charge_point;
    let mut failures = 0u32;
    let mut storms_seen = control.borrow().storm;
    loop {
        if control.borrow().stop {
            return;
        }
        stats
            .connect_attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let connected = tokio::select! {
            connected = connector.connect(&id, version, index) => connected,
            _ = stopped(&mut control) => return,
        };
        let delay = match connected {
            Err(error) => {
                stats.error(&error.kind());
                failures += 1;
                profile.backoff.delay(failures)
            }
            Ok(socket) => {
                stats
                    .connects
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                stats
                    .connected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (end, booted) = state.session(socket, &mut control, &mut storms_seen).await;
                stats
                    .connected
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                if booted {
                    stats
                        .booted
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    failures = 0;
                }
                match end {
                    End::Stop => return,
                    // A storm and a reboot come back at once, spread by the random part only.
                    End::Storm | End::Reboot => profile.backoff.jitter.mul_f64(fastrand::f64()),
                    End::Lost(how) => {
                        stats
                            .disconnects
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        stats.error(how);
                        failures += 1;
                        profile.backoff.delay(failures)
                    }
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut control) => return,
        }
    }
}

/// Resolves once the run asks every charge point to stop.
async fn stopped(control: &mut watch::Receiver<Control>) {
    // A closed channel means the run is gone: stop too.
    let _ = control.wait_for(|control| control.stop).await;
}

/// A CALL waiting for its answer.
struct Pending {
    id: String,
    purpose: Purpose,
    /// When it should have been sent: latency counts from here, so a charge point that
    /// falls behind its schedule shows the delay (no coordinated omission).
    intended: Instant,
    deadline: Instant,
}

/// A CALL queued to go out before the scenario's next message.
struct Queued {
    message: Outgoing,
    since: Instant,
}

struct State {
    index: usize,
    id: String,
    version: OcppVersion,
    profile: Arc<Profile>,
    stats: Arc<Stats>,
    configuration: Configuration,
    behaviour: Behaviour,
    /// The reason the next BootNotification gives (2.x): `RemoteReset` after a Reset,
    /// `Triggered` when asked for, else `PowerUp` (a reconnect is reported as one too).
    boot_reason: &'static str,
}

impl State {
    /// The charge point as it is before its first connection.
    fn new(charge_point: &ChargePoint, profile: Arc<Profile>, stats: Arc<Stats>) -> State {
        let version = charge_point.version;
        State {
            index: charge_point.index,
            id: charge_point.id.clone(),
            version,
            configuration: Configuration::new(version, profile.connectors),
            behaviour: Behaviour::new(
                version,
                profile.scenario,
                profile.connectors,
                profile.meter_values_per_transaction,
                &charge_point.id,
                format!("TAG{:08X}", charge_point.number),
            ),
            profile,
            stats,
            boot_reason: "PowerUp",
        }
    }

    /// Runs one connection. Returns why it ended and whether it had booted.
    async fn session(
        &mut self,
        mut socket: Socket,
        control: &mut watch::Receiver<Control>,
        storms_seen: &mut u32,
    ) -> (End, bool) {
        let mut link = Link::default();
        link.queue.push_back(Queued {
            message: self.boot_message(),
            since: Instant::now(),
        });
        let end = loop {
            if let Err(how) = self.send_next(&mut socket, &mut link).await {
                break End::Lost(how);
            }
            let wake = link.next_wake();
            tokio::select! {
                frame = socket.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(_))) => break End::Lost("closed_by_server"),
                        Some(Ok(Message::Binary(_))) => {
                            self.stats.error("binary_frame");
                            continue;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) => break End::Lost("connection_error"),
                        None => break End::Lost("connection_lost"),
                    };
                    match self.receive(&mut socket, &mut link, text.as_str()).await {
                        Ok(None) => {}
                        Ok(Some(end)) => break end,
                        Err(how) => break End::Lost(how),
                    }
                }
                _ = sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {
                    self.on_timers(&mut link);
                }
                changed = control.changed() => {
                    let now = *control.borrow_and_update();
                    if changed.is_err() || now.stop {
                        break End::Stop;
                    }
                    if now.storm != *storms_seen {
                        *storms_seen = now.storm;
                        break End::Storm;
                    }
                }
            }
        };
        match end {
            End::Stop | End::Reboot => {
                let _ = socket
                    .close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    }))
                    .await;
            }
            // A storm is an abrupt loss: drop the socket without a closing handshake.
            End::Storm | End::Lost(_) => {}
        }
        if matches!(end, End::Reboot) {
            self.behaviour.reboot();
            self.boot_reason = "RemoteReset";
        }
        if link.pending.is_some() && !matches!(end, End::Stop) {
            // The answer will never come; count it as a timeout of a kind.
            self.stats.error("call_unanswered_at_disconnect");
        }
        (end, link.booted)
    }

    fn boot_message(&mut self) -> Outgoing {
        let reason = std::mem::replace(&mut self.boot_reason, "PowerUp");
        Outgoing {
            action: "BootNotification",
            payload: payloads::boot_notification(
                self.version,
                &self.profile.identity,
                &format!("SN-{}", self.id),
                reason,
            ),
            purpose: Purpose::Boot,
        }
    }

    /// Sends the next CALL when none is outstanding: queued ones first, then the scenario's
    /// when its time has come.
    async fn send_next(
        &mut self,
        socket: &mut Socket,
        link: &mut Link,
    ) -> Result<(), &'static str> {
        if link.pending.is_some() {
            return Ok(());
        }
        let now = Instant::now();
        let (message, intended) = if let Some(queued) = link.queue.pop_front() {
            (queued.message, queued.since)
        } else if link.booted && self.behaviour.sends_at_rate() {
            match (self.profile.rate.interval(), link.next_tick) {
                (None, _) => (self.behaviour.next_message(), now),
                (Some(interval), Some(tick)) if tick <= now => {
                    link.next_tick = Some(tick + interval);
                    (self.behaviour.next_message(), tick)
                }
                _ => return Ok(()),
            }
        } else {
            return Ok(());
        };
        link.next_id += 1;
        let id = link.next_id.to_string();
        let frame = frames::call(&id, message.action, &message.payload);
        socket
            .send(Message::text(frame))
            .await
            .map_err(|_| "send_failed")?;
        self.stats
            .calls_sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        link.pending = Some(Pending {
            id,
            purpose: message.purpose,
            intended,
            deadline: Instant::now() + self.profile.call_timeout,
        });
        Ok(())
    }

    /// Handles one text frame. Returns an end when the connection should close.
    async fn receive(
        &mut self,
        socket: &mut Socket,
        link: &mut Link,
        text: &str,
    ) -> Result<Option<End>, &'static str> {
        let Some((reply, follow_up)) = self.take_in(link, text) else {
            return Ok(None);
        };
        socket
            .send(Message::text(reply))
            .await
            .map_err(|_| "send_failed")?;
        Ok(self.follow_up(link, follow_up))
    }

    /// Takes in one text frame. When it is a CALL of the central system's, returns the
    /// answer to send and what the CALL asks for once it is answered.
    fn take_in(&mut self, link: &mut Link, text: &str) -> Option<(String, Option<FollowUp>)> {
        let Ok(frame) = Frame::decode(text, self.version) else {
            self.stats.error("malformed_frame");
            return None;
        };
        match frame {
            Frame::Call { message_id, .. }
                if self.profile.echo_baseline && link.is_pending(&message_id) =>
            {
                self.answered(link, None, true);
                None
            }
            Frame::CallResult {
                message_id,
                payload,
            } => {
                if !link.is_pending(&message_id) {
                    self.stats.error("unexpected_result");
                } else if let Ok(payload) = frames::payload(&payload) {
                    self.answered(link, Some(&payload), true);
                } else {
                    self.stats.error("malformed_frame");
                }
                None
            }
            Frame::CallError(error) => {
                if link.is_pending(&error.message_id) {
                    self.stats
                        .call_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.stats
                        .error(&format!("call_error_{}", error.error_code));
                    self.answered(link, None, false);
                } else {
                    self.stats.error("unexpected_call_error");
                }
                None
            }
            // 2.1: the central system could not use one of our CALLRESULTs. Its CALL is over
            // and ours are not affected, but the simulator answered wrongly: not a clean run.
            Frame::CallResultError(error) => {
                self.stats
                    .error(&format!("call_result_error_{}", error.error_code));
                None
            }
            // 2.1: a SEND expects no answer, and no SEND asks a charge point to do anything
            // the simulator models.
            Frame::Send { .. } => None,
            Frame::Call {
                message_id,
                action,
                payload,
            } => {
                let Ok(payload) = frames::payload(&payload) else {
                    self.stats.error("malformed_frame");
                    return None;
                };
                self.stats
                    .server_calls
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (answer, follow_up) =
                    answers::answer(self.version, &action, &payload, &mut self.configuration);
                Some((
                    frames::answer(&message_id, &answer, self.version),
                    follow_up,
                ))
            }
        }
    }

    fn follow_up(&mut self, link: &mut Link, follow_up: Option<FollowUp>) -> Option<End> {
        let now = Instant::now();
        let message = match follow_up? {
            FollowUp::Reboot => return Some(End::Reboot),
            FollowUp::StartTransaction { id_tag } => {
                self.behaviour.remote_start(id_tag);
                return None;
            }
            FollowUp::StopTransaction => {
                self.behaviour.remote_stop();
                return None;
            }
            FollowUp::Send(Trigger::BootNotification) => {
                self.boot_reason = "Triggered";
                self.boot_message()
            }
            FollowUp::Send(Trigger::Heartbeat) => Outgoing {
                action: "Heartbeat",
                payload: payloads::heartbeat(),
                purpose: Purpose::Plain,
            },
            FollowUp::Send(Trigger::StatusNotification) => {
                for message in self.behaviour.after_boot() {
                    link.queue.push_back(Queued {
                        message,
                        since: now,
                    });
                }
                return None;
            }
            FollowUp::Send(Trigger::MeterValues) => self.behaviour.meter_values_now(),
        };
        link.queue.push_back(Queued {
            message,
            since: now,
        });
        None
    }

    /// Takes in the answer (or CALLERROR, `payload` None and `ok` false) to the pending CALL.
    fn answered(&mut self, link: &mut Link, payload: Option<&Value>, ok: bool) {
        let Some(pending) = link.pending.take() else {
            return;
        };
        if ok {
            self.stats
                .calls_answered
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.stats
                .record_latency(self.index, pending.intended.into_std());
        }
        if pending.purpose == Purpose::Boot {
            self.on_boot_answer(link, payload);
        } else {
            self.behaviour
                .answered(pending.purpose, payload.filter(|_| ok));
        }
    }

    fn on_boot_answer(&mut self, link: &mut Link, payload: Option<&Value>) {
        let (interval, status) = payload.map_or((None, None), payloads::boot_answer);
        let now = Instant::now();
        if status == Some("Accepted") || (self.profile.echo_baseline && payload.is_none()) {
            if !link.booted {
                link.booted = true;
                self.stats
                    .booted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            for message in self.behaviour.after_boot() {
                link.queue.push_back(Queued {
                    message,
                    since: now,
                });
            }
            let heartbeat = self
                .profile
                .heartbeat_interval
                .or(interval.map(Duration::from_secs))
                .filter(|interval| !interval.is_zero());
            link.heartbeat_interval = heartbeat;
            link.next_heartbeat = heartbeat.map(|interval| now + interval);
            // Spread the first message over one interval so charge points that booted
            // together do not send in lockstep.
            link.next_tick = self
                .profile
                .rate
                .interval()
                .filter(|_| self.behaviour.sends_at_rate())
                .map(|interval| now + interval.mul_f64(fastrand::f64()));
        } else {
            // Pending, Rejected or an error: boot again after the interval (OCPP's rule),
            // at least a second later.
            let wait = Duration::from_secs(interval.unwrap_or(10).max(1));
            link.retry_boot_at = Some(now + wait);
        }
    }

    fn on_timers(&mut self, link: &mut Link) {
        let now = Instant::now();
        if link
            .pending
            .as_ref()
            .is_some_and(|pending| pending.deadline <= now)
        {
            self.stats
                .call_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.stats.error("call_timeout");
            let purpose = link.pending.as_ref().map(|pending| pending.purpose);
            link.pending = None;
            if purpose == Some(Purpose::Boot) {
                self.on_boot_answer(link, None);
            } else if let Some(purpose) = purpose {
                self.behaviour.answered(purpose, None);
            }
        }
        if link.retry_boot_at.is_some_and(|at| at <= now) {
            link.retry_boot_at = None;
            let message = self.boot_message();
            link.queue.push_back(Queued {
                message,
                since: now,
            });
        }
        if let (Some(at), Some(interval)) = (link.next_heartbeat, link.heartbeat_interval) {
            if at <= now {
                link.next_heartbeat = Some(now + interval);
                // The scenario's own heartbeats make a separate one redundant.
                if !matches!(self.profile.scenario, Scenario::Heartbeat)
                    || self
                        .profile
                        .rate
                        .interval()
                        .is_none_or(|tick| tick > interval)
                {
                    link.queue.push_back(Queued {
                        message: Outgoing {
                            action: "Heartbeat",
                            payload: payloads::heartbeat(),
                            purpose: Purpose::Plain,
                        },
                        since: now,
                    });
                }
            }
        }
    }
}

/// One connection's state.
#[derive(Default)]
struct Link {
    next_id: u64,
    pending: Option<Pending>,
    queue: VecDeque<Queued>,
    booted: bool,
    next_tick: Option<Instant>,
    heartbeat_interval: Option<Duration>,
    next_heartbeat: Option<Instant>,
    retry_boot_at: Option<Instant>,
}

impl Link {
    /// Whether `id` is the outstanding CALL's message id.
    fn is_pending(&self, id: &str) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|pending| pending.id == id)
    }

    /// The earliest timer that needs the task awake.
    fn next_wake(&self) -> Option<Instant> {
        let tick = if self.pending.is_none() && self.queue.is_empty() {
            self.next_tick
        } else {
            None
        };
        [
            self.pending.as_ref().map(|pending| pending.deadline),
            tick,
            self.next_heartbeat,
            self.retry_boot_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge_point(version: OcppVersion) -> State {
        let profile = Profile {
            scenario: Scenario::Heartbeat,
            rate: Rate::Max,
            heartbeat_interval: None,
            connectors: 1,
            meter_values_per_transaction: 1,
            call_timeout: Duration::from_secs(30),
            backoff: Backoff {
                minimum: Duration::from_secs(1),
                maximum: Duration::from_secs(1),
                jitter: Duration::ZERO,
            },
            echo_baseline: false,
            identity: Identity::default(),
        };
        let identity = ChargePoint {
            index: 0,
            number: 1,
            id: "CP-1".into(),
            version,
        };
        State::new(&identity, Arc::new(profile), Arc::new(Stats::default()))
    }

    /// A connection whose Heartbeat CALL "1" waits for its answer.
    fn waiting_for_call_1() -> Link {
        Link {
            pending: Some(Pending {
                id: "1".into(),
                purpose: Purpose::Plain,
                intended: Instant::now(),
                deadline: Instant::now() + Duration::from_secs(30),
            }),
            ..Link::default()
        }
    }

    #[test]
    fn a_call_result_error_counts_as_an_error_answer_not_a_malformed_frame() {
        let mut state = charge_point(OcppVersion::V21);
        let mut link = waiting_for_call_1();
        let reply = state.take_in(&mut link, r#"[5,"42","FormatViolation","bad answer",{}]"#);
        assert_eq!(reply, None, "a CALLRESULTERROR is never answered");
        assert_eq!(
            state.stats.errors(),
            [("call_result_error_FormatViolation".to_owned(), 1)].into()
        );
        // It is about the central system's CALL, not ours: ours still waits.
        assert!(link.is_pending("1"));
        assert_eq!(state.stats.counters().call_errors, 0);
    }

    #[test]
    fn a_send_from_the_central_system_is_ignored_without_an_answer() {
        let mut state = charge_point(OcppVersion::V21);
        let mut link = waiting_for_call_1();
        let send = r#"[6,"43","NotifyPeriodicEventStream",{"id":1,"pending":0,"basetime":"2025-01-01T00:00:00Z","data":[]}]"#;
        assert_eq!(state.take_in(&mut link, send), None);
        assert!(
            state.stats.errors().is_empty(),
            "{:?}",
            state.stats.errors()
        );
        assert_eq!(state.stats.counters().server_calls, 0);
        assert!(link.is_pending("1"));
    }

    #[test]
    fn message_types_5_and_6_are_malformed_before_2_1() {
        let mut state = charge_point(OcppVersion::V201);
        let mut link = waiting_for_call_1();
        assert_eq!(
            state.take_in(&mut link, r#"[5,"42","FormatViolation","",{}]"#),
            None
        );
        assert_eq!(
            state.take_in(&mut link, r#"[6,"43","NotifyPeriodicEventStream",{}]"#),
            None
        );
        assert_eq!(
            state.stats.errors(),
            [("malformed_frame".to_owned(), 2)].into()
        );
    }

    #[test]
    fn answers_and_calls_go_through_the_ocpp_codec() {
        let mut state = charge_point(OcppVersion::V16);
        let mut link = waiting_for_call_1();
        let reply = state.take_in(
            &mut link,
            r#"[3,"1",{"currentTime":"2025-01-01T00:00:00Z"}]"#,
        );
        assert_eq!(reply, None);
        assert!(link.pending.is_none());
        assert_eq!(state.stats.counters().calls_answered, 1);

        let (reply, follow_up) = state
            .take_in(&mut link, r#"[2,"9","InstallCertificate",{}]"#)
            .expect("a CALL is answered");
        assert_eq!(
            reply,
            r#"[4,"9","NotImplemented","the simulator does not implement InstallCertificate",{}]"#
        );
        assert_eq!(follow_up, None);
        assert_eq!(state.stats.counters().server_calls, 1);

        assert_eq!(state.take_in(&mut link, r#"[3,"1"]"#), None);
        assert_eq!(
            state.stats.errors(),
            [("malformed_frame".to_owned(), 1)].into()
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_plus_jitter() {
        let backoff = Backoff {
            minimum: Duration::from_secs(1),
            maximum: Duration::from_secs(8),
            jitter: Duration::from_millis(500),
        };
        for (attempt, base) in [(1, 1), (2, 2), (3, 4), (4, 8), (9, 8), (60, 8)] {
            let delay = backoff.delay(attempt);
            assert!(
                delay >= Duration::from_secs(base)
                    && delay <= Duration::from_secs(base) + Duration::from_millis(500),
                "attempt {attempt}: {delay:?}"
            );
        }
    }
}
